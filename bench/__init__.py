"""Benchmarks of reauthbot, run by hand from the repository root; not part of the test suite.

- ``python -m bench.webhook_ingest``: webhook ingestion by the real service vs a bare server.
- ``python -m bench.reconcile``: one reconciliation of 100,000 accounts against the fake Nylas.

See bench/README.md.
"""
