"""Tests of ijckd_bounds.data."""
