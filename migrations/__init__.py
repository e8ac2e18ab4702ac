"""Alembic environment and versions of the outbox schema (installed as ``outbox.migrations``)."""
