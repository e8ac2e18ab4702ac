"""The canonical form of history rows is the exact text `outbox_0004` hashed, whatever a row holds.

`outbox_0006` builds the form by concatenation instead of json_build_object; a single byte of
difference would make every seal ever written fail `outbox audit verify`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox.audit import canonical, seal
from outbox.audit.verify import verify
from tests.integration.relay_harness import SEALING, wait_for

MIGRATION = Path(__file__).parents[2] / "migrations" / "versions" / "0006_canonical_form_faster.py"


def migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("outbox_0006", MIGRATION)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFERENCE = migration().BUILT  # the json_build_object form of outbox_0004
EVENTS = ["enqueued", "claimed", "succeeded", "failed", "retried", "dead", "cancelled"]
# PostgreSQL text holds any character but NUL (and UTF-8 no lone surrogate).
_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
_hostile = st.sampled_from(
    ['"', "\\", "\n\t\r\b\f", "\u2028\u2029", "</script>", "é€😀", "\x01\x1f"]
)
_strings = st.one_of(st.none(), _text, _hostile)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | _text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
_floats = st.one_of(
    st.none(),
    st.floats(),  # NaN and both infinities included
    st.sampled_from([0.0, -0.0, 1e-9, 0.0005, 0.0015, 2.5e15, 1e300]),
)
_edges = ["infinity", "-infinity", "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"]
_instants = st.one_of(
    st.none(),
    st.sampled_from(_edges),
    st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=st.just(UTC)).map(str),
)


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "job_uuid": draw(st.uuids()),
        "event": draw(st.sampled_from(EVENTS)),
        "type": draw(_text.filter(bool)),
        "queue": draw(_text.filter(bool)),
        "key": draw(_strings),
        "attempt": draw(st.integers(0, 2**31 - 1)),
        "payload": None if draw(st.booleans()) else json.dumps(draw(_json)),
        "payload_sha256": draw(st.one_of(st.none(), st.binary(min_size=32, max_size=32))),
        "run_at": draw(_instants),
        "relay": draw(_strings),
        "actor": draw(_strings),
        "reason": draw(_strings),
        "error": None if draw(st.booleans()) else json.dumps({"message": draw(_text)}),
        "duration_ms": draw(_floats),
        "at": draw(_instants.filter(lambda at: at is not None)),
    }


INSERT = sa.text(
    """
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, payload,
                                payload_sha256, run_at, relay, actor, reason, error,
                                duration_ms, at)
    VALUES (:job_uuid, :event, :type, :queue, :key, :attempt, CAST(:payload AS jsonb),
            :payload_sha256, CAST(:run_at AS timestamptz), :relay, :actor, :reason,
            CAST(:error AS jsonb), :duration_ms, CAST(:at AS timestamptz))
    RETURNING id
    """
)
COMPARE = sa.text(
    f"""
    SELECT outbox_history_canonical(h), ({REFERENCE})
    FROM outbox_history AS h WHERE h.id = :id
    """
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(row=rows())
def test_the_concatenated_form_is_the_built_form_byte_for_byte(
    db: sa.Engine, row: dict[str, Any]
) -> None:
    with db.begin() as conn:
        conn.execute(sa.text("SET LOCAL TimeZone = 'Pacific/Chatham'"))  # never the session's
        conn.execute(sa.text("SET LOCAL extra_float_digits = 0"))
        history_id = conn.execute(INSERT, row).scalar_one()
        ours, reference = conn.execute(COMPARE, {"id": history_id}).one()
    assert ours == reference
    json.loads(ours)  # and it is JSON


def test_infinite_and_missing_values_are_null_in_both_forms(db: sa.Engine) -> None:
    row = {
        "job_uuid": uuid.uuid4(), "event": "failed", "type": "a.b", "queue": "q", "key": None,
        "attempt": 1, "payload": None, "payload_sha256": None, "run_at": "infinity",
        "relay": None, "actor": None, "reason": None, "error": None,
        "duration_ms": math.nan, "at": "-infinity",
    }  # fmt: skip
    with db.begin() as conn:
        history_id = conn.execute(INSERT, row).scalar_one()
        ours, reference = conn.execute(COMPARE, {"id": history_id}).one()
    assert ours == reference
    assert '"run_at" : null' in ours
    assert '"at" : null' in ours
    assert '"duration_ms" : "NaN"' in ours


def test_a_chain_sealed_under_the_old_form_verifies_under_the_new(db: sa.Engine) -> None:
    """The upgrade itself: seal with the json_build_object body, switch, verify."""
    old, new = migration().BUILT, migration().CONCATENATED
    with db.begin() as conn:
        for n in range(50):
            conn.execute(INSERT, {
                "job_uuid": uuid.uuid4(), "event": "enqueued", "type": "a.b", "queue": "q",
                "key": f"k\"{n}\\", "attempt": 0, "payload": json.dumps({"n": n, "s": "é\n"}),
                "payload_sha256": None, "run_at": None, "relay": None, "actor": None,
                "reason": None, "error": None, "duration_ms": n / 7,
                "at": str(datetime.now(UTC) - timedelta(seconds=n)),
            })  # fmt: skip
    try:
        _replace_canonical(db, old)
        with db.connect() as conn:
            wait_for(lambda: seal.seal_all(conn), timeout=SEALING, what="the rows to be sealed")
        _replace_canonical(db, new)
        with db.connect() as conn:
            report = verify(conn)  # raises at the first row whose text changed
        assert report.rows == 50
    finally:
        _replace_canonical(db, new)


def _replace_canonical(db: sa.Engine, body: str) -> None:
    with db.begin() as conn:
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION outbox_history_canonical(h outbox_history) RETURNS text "
            f"LANGUAGE sql STABLE PARALLEL SAFE AS $$ {body} $$"
        )


def test_a_seal_digests_its_rows_canonical_texts_as_verifiers_recompute_them(
    db: sa.Engine,
) -> None:
    """The rows digest and prefixes, hashed in the database, are what anyone gets from the
    canonical texts alone: SHA-256 of each row's text, concatenated in canonical order and
    hashed once more; each row's first 8 bytes kept."""
    with db.begin() as conn:
        for n in range(30):
            conn.execute(INSERT, {
                "job_uuid": uuid.uuid4(), "event": EVENTS[n % len(EVENTS)], "type": "a.b",
                "queue": "q", "key": f"é{n}", "attempt": n % 3,
                "payload": json.dumps({"n": n}), "payload_sha256": None, "run_at": None,
                "relay": None, "actor": None, "reason": None, "error": None,
                "duration_ms": n / 3, "at": str(datetime.now(UTC)),
            })  # fmt: skip
    with db.connect() as conn:
        sealed = wait_for(lambda: seal.seal_all(conn), timeout=SEALING, what="a seal")
        for link in sealed:
            texts = list(canonical.canonical_rows(conn, link.xid_from, link.xid_to))
            hashes = [hashlib.sha256(text.encode()).digest() for text in texts]
            assert link.row_count == len(texts)
            assert link.rows_digest == hashlib.sha256(b"".join(hashes)).digest()
            assert link.row_hashes == b"".join(h[:8] for h in hashes)
        empty = canonical.digest_range(conn, 0, 1)  # no transaction 0: no rows
    assert sum(link.row_count for link in sealed) >= 30
    assert (empty.row_count, empty.row_hashes) == (0, b"")
    assert empty.rows_digest == hashlib.sha256(b"").digest()
