"""The test suite's own layout: folders that follow the package, and no test module that
imports another (shared helpers live in conftest.py fixtures or in a helper module)."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "ijckd_bounds"
DATA_FILES = "files"  # test data (not tests) lives in tests/files/


def _test_modules():
    return sorted(TESTS.rglob("test_*.py"))


def _imported(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_test_module_imports_another():
    offenders = []
    for path in _test_modules():
        for module in _imported(path):
            if module.split(".")[-1].startswith("test_") or module.startswith("conftest") \
                    or module.endswith(".conftest"):
                offenders.append(f"{path.relative_to(TESTS)} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_test_folders_follow_the_package():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    folders.discard(DATA_FILES)
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders <= packages, f"test folders without a package folder: {folders - packages}"
    for folder in folders:
        assert (TESTS / folder / "__init__.py").is_file(), folder
        assert list((TESTS / folder).glob("test_*.py")), f"tests/{folder}/ holds no tests"
