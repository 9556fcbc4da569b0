"""The house's layers hold: no module imports a layer above its own, and no import circle."""

import shutil
import subprocess

import grimp
import pytest

from tests.helpers import REPO


def test_import_linter_contracts_are_kept():
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([lint], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_no_module_imports_itself_back_through_others():
    graph = grimp.build_graph("pneumo")
    circles = [
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if graph.find_shortest_chain(importer=b, imported=a) is not None
    ]
    assert not circles, f"import circles through {circles[:3]}"


def test_every_module_imports():
    """A module naming one that moved or was removed fails here, not in a user's command."""
    import importlib
    import pkgutil

    import pneumo

    failed = {}
    for module in pkgutil.walk_packages(pneumo.__path__, "pneumo."):
        try:
            importlib.import_module(module.name)
        except Exception as err:  # any failure to import is the finding
            failed[module.name] = repr(err)
    assert not failed, failed
