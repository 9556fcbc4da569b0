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
