"""The audit of the append-only history (G7): the digest chain of seals, its verification,
export and prune, the auditors' queries, and payload and error redaction.

Import the module for the concern: ``outbox.audit.seal``, ``outbox.audit.verify``,
``outbox.audit.retention``, ``outbox.audit.trail``.
"""
