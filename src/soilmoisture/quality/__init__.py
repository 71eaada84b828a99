"""Data rules and the expectation gate between ``data/interim`` and ``data/processed``.

``suites`` builds the Great Expectations suites from parameter values and summarises results (no file
access); ``gate`` runs them against the interim tables and publishes only on success.
"""
