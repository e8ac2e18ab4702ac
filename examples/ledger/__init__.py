"""A small double-entry ledger that posts through outbox (installed as ``outbox.demo``).

A transfer writes its two entries and enqueues the jobs they cause in one
transaction. ``outbox demo`` runs it end to end.
"""
