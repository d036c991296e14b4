"""The data flow of STYLE.md, enforced by scanning imports."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ijckd_bounds"


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


RULES = {
    "estimators": ("ijckd_bounds.train", "ijckd_bounds.tracking", "ijckd_bounds.plotting",
                   "ijckd_bounds.app"),
    "plotting": ("torch", "ijckd_bounds.estimators", "ijckd_bounds.train",
                 "ijckd_bounds.tracking", "ijckd_bounds.models", "ijckd_bounds.app"),
    "train": ("ijckd_bounds.estimators", "ijckd_bounds.tracking", "ijckd_bounds.plotting",
              "ijckd_bounds.app"),
    "models": ("ijckd_bounds.train", "ijckd_bounds.estimators", "ijckd_bounds.tracking",
               "ijckd_bounds.plotting"),
    "data": ("ijckd_bounds.train", "ijckd_bounds.estimators", "ijckd_bounds.tracking",
             "ijckd_bounds.plotting", "ijckd_bounds.models"),
}


@pytest.mark.parametrize("subpackage", sorted(RULES))
def test_layering(subpackage):
    files = sorted((PACKAGE / subpackage).glob("*.py"))
    assert files, f"no modules in {subpackage}"
    for path in files:
        for module in imported_modules(path):
            for banned in RULES[subpackage]:
                assert not (module == banned or module.startswith(banned + ".")), (
                    f"{path.relative_to(PACKAGE.parent)} imports {module}")


def test_checkpoint_reader_does_not_import_the_trainer():
    path = PACKAGE / "checkpoint.py"
    if not path.exists():
        pytest.skip("checkpoint.py not present")
    assert not any(m.startswith("ijckd_bounds.train") for m in imported_modules(path))
