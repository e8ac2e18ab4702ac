"""The audit of the append-only history (G7): the digest chain of seals, its verification,
export and prune, the auditors' queries, and payload and error redaction.

Import the module for the concern: ``chain`` (the links and their digests), ``canonical``
(history rows as hashed), ``seal``, ``verify``, ``retention`` (export and prune), ``trail``
and ``redaction``.
"""
