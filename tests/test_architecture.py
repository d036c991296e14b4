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


# layer -> the modules it may never import (a module is banned with its submodules)
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
    "tracking": ("ijckd_bounds.train", "ijckd_bounds.plotting", "ijckd_bounds.app"),
    # the audit's Markdown is written from plain numbers: no torch, no estimator
    "reporting": ("torch", "ijckd_bounds.estimators", "ijckd_bounds.train",
                  "ijckd_bounds.tracking", "ijckd_bounds.app"),
}

# only the application layer wires these together
WIRED_BY_THE_APPLICATION = ("ijckd_bounds.data", "ijckd_bounds.train", "ijckd_bounds.tracking")


def layer_files(layer):
    """The modules of a layer: a subpackage's files, or the top-level ``<layer>*.py``."""
    if (PACKAGE / layer).is_dir():
        return sorted((PACKAGE / layer).glob("*.py"))
    return sorted(PACKAGE.glob(f"{layer}*.py"))


def within(module, prefix):
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layering(layer):
    files = layer_files(layer)
    assert files, f"no modules in {layer}"
    for path in files:
        for module in imported_modules(path):
            for banned in RULES[layer]:
                assert not within(module, banned), (
                    f"{path.relative_to(PACKAGE.parent)} imports {module}")


def package_files_outside_the_application():
    return [path for path in sorted(PACKAGE.rglob("*.py"))
            if path.relative_to(PACKAGE).parts[0] != "app"]


def test_only_the_application_layer_imports_data_train_and_tracking_together():
    files = package_files_outside_the_application()
    assert files
    for path in files:
        modules = set(imported_modules(path))
        wired = [layer for layer in WIRED_BY_THE_APPLICATION
                 if any(within(module, layer) for module in modules)]
        assert len(wired) < len(WIRED_BY_THE_APPLICATION), (
            f"{path.relative_to(PACKAGE.parent)} imports {', '.join(wired)}: only "
            "ijckd_bounds/app/ wires them together")


def test_nothing_below_the_application_layer_imports_it():
    for path in package_files_outside_the_application():
        if path.name == "__main__.py" and path.parent == PACKAGE:
            continue  # ``python -m ijckd_bounds`` is the command line
        for module in imported_modules(path):
            assert not within(module, "ijckd_bounds.app"), (
                f"{path.relative_to(PACKAGE.parent)} imports {module}")


def test_checkpoint_reader_does_not_import_the_trainer():
    path = PACKAGE / "checkpoint.py"
    if not path.exists():
        pytest.skip("checkpoint.py not present")
    assert not any(m.startswith("ijckd_bounds.train") for m in imported_modules(path))


def test_schema_lists_exactly_the_registered_methods():
    """The method order, colours and labels of every figure and table (schema) cover the
    trainer's registry: a new objective must be placed in schema, and a removed one leaves."""
    from ijckd_bounds import schema
    from ijckd_bounds.train.objectives import METHODS

    listed = schema.DISTILLATION_METHODS + schema.CONTROL_METHODS
    assert len(set(listed)) == len(listed)
    assert set(listed) == set(METHODS.names())
    assert schema.METHOD_ORDER == ("teacher",) + schema.DISTILLATION_METHODS
    assert set(schema.METHOD_COLOURS) == set(schema.METHOD_LABELS) == set(schema.METHOD_ORDER)
