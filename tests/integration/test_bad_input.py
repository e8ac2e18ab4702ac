"""G8: bad input is refused at enqueue with a reason, nothing is written, and the
application's transaction stays usable."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from outbox.bulk import COPY_THRESHOLD
from tests.integration.helpers import count, jobs

BAD: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("not json", {"payload": {"amount": Decimal("1.10")}}, outbox.PayloadNotJSON, "minor units"),
    ("nan", {"payload": {"x": math.nan}}, outbox.PayloadNotJSON, "not JSON"),
    ("int key", {"payload": {1: "a"}}, outbox.PayloadNotJSON, "keys must be str"),
    ("list payload", {"payload": [1, 2]}, outbox.PayloadNotJSON, "JSON object"),
    ("nul", {"payload": {"s": "a\x00b"}}, outbox.PayloadNotJSON, "NUL"),
    ("too large", {"payload": {"s": "x" * (1024 * 1024)}}, outbox.PayloadTooLarge, "limit"),
    ("empty type", {"type": ""}, outbox.InvalidJob, "empty"),
    ("long type", {"type": "t" * 129}, outbox.InvalidJob, "at most 128"),
    ("bad queue", {"queue": "has space"}, outbox.InvalidJob, "queue"),
    ("long key", {"key": "k" * 256}, outbox.InvalidJob, "at most 255"),
    ("blank key", {"key": "  "}, outbox.InvalidJob, "blank"),
    ("c1 control in key", {"key": "acct\x9b42"}, outbox.InvalidJob, "control character"),
    ("invisible key", {"key": "\u200b"}, outbox.InvalidJob, "only invisible characters"),
    ("invisible idempotency key", {"idempotency_key": "\ufeff"}, outbox.InvalidJob, "invisible"),
    ("negative zero", {"payload": {"x": [-0.0]}}, outbox.PayloadNotJSON, r"-0\.0"),
    ("negative priority", {"priority": -1}, outbox.InvalidJob, "out of range"),
    (
        "both times",
        {"run_at": datetime.now().astimezone(), "delay": 5},
        outbox.InvalidJob,
        "not both",
    ),
    ("naive run_at", {"run_at": datetime(2030, 1, 1)}, outbox.InvalidJob, "naive"),
    ("negative delay", {"delay": timedelta(seconds=-1)}, outbox.InvalidJob, "zero or more"),
    ("zero attempts", {"max_attempts": 0}, outbox.InvalidJob, "between 1 and"),
]


def options(**changes: Any) -> dict[str, Any]:
    return {"type": "pay.capture", "payload": {"id": 1}, **changes}


@pytest.mark.parametrize(("case", "changes", "error", "reason"), BAD, ids=[c[0] for c in BAD])
def test_bad_job_is_refused_and_the_transaction_goes_on(
    db: sa.Engine, case: str, changes: dict[str, Any], error: type[Exception], reason: str
) -> None:
    with Session(db) as session:
        job = options(**changes)
        with pytest.raises(error, match=reason):
            outbox.enqueue(session, job.pop("type"), job.pop("payload"), **job)
        good = outbox.enqueue(session, "pay.capture", {"id": 2})
        session.commit()
    assert [j.uuid for j in jobs(db)] == [good.uuid]
    assert count(db, "outbox_history") == 1


@pytest.mark.parametrize("size", [5, COPY_THRESHOLD + 5], ids=["statement", "copy"])
def test_one_bad_job_refuses_the_whole_batch_and_keeps_earlier_work(
    db: sa.Engine, size: int
) -> None:
    """On the COPY path the bad payload is met mid-stream, after rows were sent."""
    batch = [outbox.NewJob("x.y", {"n": n}, key="k", idempotency_key=f"i{n}") for n in range(size)]
    batch[-2] = outbox.NewJob("x.y", {"n": {1, 2}})
    with Session(db) as session:
        earlier = outbox.enqueue(session, "x.before", {}, key="k")
        with pytest.raises(outbox.PayloadNotJSON, match=rf"job {size - 2} of {size}.*set"):
            outbox.enqueue_many(session, batch)
        later = outbox.enqueue(session, "x.after", {}, idempotency_key="i0")
        session.commit()
    assert [j.uuid for j in jobs(db)] == [earlier.uuid, later.uuid]
    assert later.duplicate is False  # the refused batch's idempotency keys were undone
    assert count(db, "outbox_history") == 2


def test_strict_registry_refuses_unknown_type(db: sa.Engine) -> None:
    registry = outbox.Registry(strict=True)
    registry.register("ledger.posted", lambda job: None)
    with Session(db) as session:
        with pytest.raises(outbox.UnknownJobType, match=r"'ledger.psoted'.*ledger.posted"):
            outbox.enqueue(session, "ledger.psoted", {}, registry=registry)
        outbox.enqueue(session, "ledger.posted", {}, registry=registry)
        session.commit()
    assert count(db, "outbox_jobs") == 1


def test_lenient_registry_accepts_unknown_type_and_supplies_handler_defaults(db: sa.Engine) -> None:
    registry = outbox.Registry()
    registry.register("ledger.posted", lambda job: None, queue="ledger", max_attempts=4)
    with Session(db) as session:
        outbox.enqueue(session, "ledger.posted", {}, registry=registry)
        outbox.enqueue(
            session, "ledger.posted", {}, registry=registry, queue="urgent", max_attempts=9
        )
        outbox.enqueue(session, "other.type", {}, registry=registry)
        session.commit()
    assert [(j.queue, j.max_attempts) for j in jobs(db)] == [
        ("ledger", 4),
        ("urgent", 9),
        ("default", None),
    ]


def test_a_session_on_another_driver_is_refused(db: sa.Engine) -> None:
    sqlite = sa.create_engine("sqlite://")
    with Session(sqlite) as session, pytest.raises(outbox.UnsupportedSession, match="psycopg"):
        outbox.enqueue(session, "x.y", {})


def test_something_that_is_not_a_session_is_refused() -> None:
    with pytest.raises(outbox.UnsupportedSession, match="Session"):
        outbox.enqueue(object(), "x.y", {})  # type: ignore[call-overload]


def test_the_schema_refuses_what_enqueue_refuses(db: sa.Engine) -> None:
    """Defence in depth: rows written around the library meet the same limits."""
    insert = sa.text(
        "INSERT INTO outbox_jobs (uuid, type, queue, payload, priority) "
        "VALUES (gen_random_uuid(), 'x', 'q', '{}', :priority)"
    )
    with db.connect() as conn, pytest.raises(sa.exc.IntegrityError, match="outbox_jobs_priority"):
        conn.execute(insert, {"priority": 101})
    running_without_lease = sa.text(
        "INSERT INTO outbox_jobs (uuid, type, queue, payload, state) "
        "VALUES (gen_random_uuid(), 'x', 'q', '{}', 'running')"
    )
    with db.connect() as conn, pytest.raises(sa.exc.IntegrityError, match="running_has_lease"):
        conn.execute(running_without_lease)


def test_lone_surrogate_is_refused_not_crashed_on(db: sa.Engine) -> None:
    with Session(db) as session:
        with pytest.raises(outbox.PayloadNotJSON, match="not valid Unicode"):
            outbox.enqueue(session, "x.y", {"name": "broken \ud800"})
        with pytest.raises(outbox.InvalidJob, match="not valid Unicode"):
            outbox.enqueue(session, "x.y", {}, key="k\udc00")
        session.commit()
    assert count(db, "outbox_jobs") == 0


def test_any_mapping_is_accepted_as_a_payload(db: sa.Engine) -> None:
    from types import MappingProxyType

    with Session(db) as session:
        outbox.enqueue(session, "x.y", MappingProxyType({"a": 1}))
        session.commit()
    assert jobs(db)[0].payload == {"a": 1}


def test_a_session_with_no_bind_is_refused() -> None:
    with Session() as session, pytest.raises(outbox.UnsupportedSession, match="no bind"):
        outbox.enqueue(session, "x.y", {})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"settings": {"payload_limit": 5}}, "settings must be an outbox.Settings or None, not"),
        ({"settings": outbox.Settings}, "settings must be an outbox.Settings or None, not type"),
        ({"settings": 0}, "settings must be an outbox.Settings or None, not int"),
        ({"registry": {}}, "registry must be an outbox.Registry or None, not dict"),
        ({"registry": outbox.Registry}, "registry must be an outbox.Registry or None, not type"),
    ],
)
def test_settings_or_a_registry_of_the_wrong_type_are_refused(
    db: sa.Engine, options: dict[str, Any], message: str
) -> None:
    """A falsy wrong value ({} or 0) used to fall back to the environment's settings
    silently; a truthy one failed deep inside with an AttributeError."""
    with Session(db) as session:
        for call in (
            lambda: outbox.enqueue(session, "x.y", {}, **options),
            lambda: outbox.enqueue_many(session, [outbox.NewJob("x.y", {})], **options),
        ):
            with pytest.raises(outbox.InvalidJob, match=f"^{message}"):
                call()
        if "registry" not in options:
            publish = outbox.publish.Publish("orders", {})
            with pytest.raises(outbox.InvalidJob, match=f"^{message}"):
                outbox.publish.publish(session, "orders", {}, **options)
            with pytest.raises(outbox.InvalidJob, match=f"^{message}"):
                outbox.publish.publish_many(session, [publish], **options)
    assert count(db, "outbox_jobs") == 0


@pytest.mark.parametrize("given", [outbox.NewJob("x.y", {}), None, 5])
def test_enqueue_many_of_something_that_is_not_a_list_of_jobs_is_refused(
    db: sa.Engine, given: Any
) -> None:
    with Session(db) as session, pytest.raises(outbox.InvalidJob, match=r"^enqueue_many takes "):
        outbox.enqueue_many(session, given)


@pytest.mark.parametrize("given", [outbox.publish.Publish("orders", {}), None, 5])
def test_publish_many_of_something_that_is_not_a_list_of_messages_is_refused(
    db: sa.Engine, given: Any
) -> None:
    with Session(db) as session, pytest.raises(outbox.InvalidJob, match=r"^publish_many takes "):
        outbox.publish.publish_many(session, given)
