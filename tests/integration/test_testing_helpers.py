"""``outbox.testing.empty_tables``: what docs/howto/testing-your-app.md gives tests that commit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.errors import ConfigurationError
from outbox.testing import empty_tables
from tests.integration.helpers import count


def test_empty_tables_empties_history_too_and_keeps_it_append_only(db: sa.Engine) -> None:
    with Session(db) as session:
        outbox.enqueue(session, "a.b", {}, idempotency_key="kept-between-tests")
        session.commit()
    with db.begin() as connection:
        empty_tables(connection)
    for table in ("outbox_jobs", "outbox_history", "outbox_idempotency"):
        assert count(db, table) == 0, table
    with Session(db) as session:  # the key is free again
        assert not outbox.enqueue(
            session, "a.b", {}, idempotency_key="kept-between-tests"
        ).duplicate
        session.commit()
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), db.begin() as connection:
        connection.execute(sa.text("DELETE FROM outbox_history"))  # the triggers are back


def test_plain_truncate_of_history_is_refused(db: sa.Engine) -> None:
    """Why the helper exists: the fixture the docs once showed cannot work."""
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), db.begin() as connection:
        connection.execute(sa.text("TRUNCATE outbox_jobs, outbox_history"))


def test_empty_tables_without_the_privilege_says_what_to_do(db: sa.Engine) -> None:
    with Session(db) as session:
        outbox.enqueue(session, "a.b", {})
        session.commit()
    with db.connect() as connection:
        connection.execute(sa.text("SET ROLE outbox_app"))
        with pytest.raises(ConfigurationError, match="GRANT SET ON PARAMETER"):
            empty_tables(connection)
        connection.rollback()
        connection.execute(sa.text("RESET ROLE"))
    assert count(db, "outbox_jobs") == 1
