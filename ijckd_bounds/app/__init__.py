"""The application layer: the command line and the workflows that wire data, training,
tracking, estimators, plotting and reporting together.

``cli`` parses arguments and hands each subcommand to ``commands``; ``demo``, ``audit``
(with ``audit_layers``) and ``compare`` are the end-to-end workflows behind the commands
of the same name. No module outside this package imports it.
"""
