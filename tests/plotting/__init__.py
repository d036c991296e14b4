"""Tests of ijckd_bounds.plotting."""
