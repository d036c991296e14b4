"""The test suite, in folders that follow the package: tests/estimators/ for
ijckd_bounds/estimators/, and so on."""
