"""Tests of ijckd_bounds.app: the command line, the audit, compare, the demo and recipes."""
