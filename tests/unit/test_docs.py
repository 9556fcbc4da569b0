"""The docs name only test files that exist: a reader sent to tests/... finds the file."""

import re

from tests.helpers import REPO

TEST_FILE = re.compile(r"\btests/[\w/]+\.py\b")


def test_every_test_file_the_docs_name_exists():
    pages = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
    named = {
        (page.relative_to(REPO).as_posix(), number, path)
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        for path in TEST_FILE.findall(line)
    }
    assert named, "no test file named in docs/ or README.md: the pattern no longer matches"
    missing = sorted(
        f"{page}:{number} names {path}" for page, number, path in named if not (REPO / path).is_file()
    )
    assert not missing, "\n".join(missing)


def test_the_readme_layout_names_every_module_and_folder():
    """A newcomer finds each module of src/pneumo and each script in the README's Layout."""
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Citing the data")]
    words = set(re.findall(r"[\w.]+/?", layout))
    package = REPO / "src" / "pneumo"
    expected = {f"{p.name}/" for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    expected |= {p.name for p in package.rglob("*.py") if p.name != "__init__.py"}
    expected |= {p.name for p in (REPO / "scripts").glob("*.py")}
    missing = sorted(expected - words)
    assert not missing, f"the README's Layout does not name {missing}"
