"""Bound tracking: the docs/theory.md terms of every checkpoint of a run, into its tables.

``track`` estimates a run's checkpoints (offline ``track_run``, online ``BoundTracker``),
``layers`` the per-stage terms, ``extract`` streams features of large splits to disk and
``table`` reads and writes the tidy tables. The subpackage exports nothing itself: import
from its modules.
"""
