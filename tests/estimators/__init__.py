"""Tests of ijckd_bounds.estimators."""
