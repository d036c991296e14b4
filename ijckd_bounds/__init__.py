"""ijckd_bounds: measure the domain-adaptation bound terms of knowledge distillation.

The public estimator API is imported lazily so that ``import ijckd_bounds`` stays cheap
for the command line and for plotting code.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "estimate_bounds", "estimate_bounds_from_file", "fit_connector",
           "IJCKDError"]

from ijckd_bounds.errors import IJCKDError  # noqa: E402


def __getattr__(name):
    if name in ("estimate_bounds", "estimate_bounds_from_file", "fit_connector"):
        from ijckd_bounds import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'ijckd_bounds' has no attribute {name!r}")
