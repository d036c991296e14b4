"""Tests of ijckd_bounds.models."""
