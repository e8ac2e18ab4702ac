"""The relay's SQL: claim, complete and rescue, each written out in full in its own file."""

from outbox.sql import load

queries: dict[str, str] = load(__name__)
