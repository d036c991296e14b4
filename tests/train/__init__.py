"""Tests of ijckd_bounds.train."""
