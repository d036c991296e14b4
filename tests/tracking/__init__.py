"""Tests of ijckd_bounds.tracking."""
