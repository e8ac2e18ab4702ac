"""The console's pages against a real database: what each shows, and how each fails."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from outbox_relay import complete, execute
from outbox_relay.claim import AttemptLimits, claim_batch
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

import outbox
from outbox import operator
from outbox.audit import chain, redaction, seal, trail
from outbox.console import ConsoleConfig, create_app
from outbox.database import create_engine
from outbox.testing import temporary_database
from tests.integration.helpers import login_role
from tests.integration.relay_harness import SEALING, scalar, wait_for

TYPE = "console.job"
HOSTILE = "<script>alert(1)</script>"


# -- helpers -----------------------------------------------------------------------------


def console(engine: sa.Engine, **config: Any) -> TestClient:
    return TestClient(create_app(engine, ConsoleConfig(**config)))


def enqueue(engine: sa.Engine, n: int = 1, **options: Any) -> list[outbox.Enqueued]:
    kind = options.pop("type", TYPE)
    payload: Callable[[int], dict[str, Any]] = options.pop("payload", lambda i: {"n": i})
    with Session(engine) as session:
        handles = outbox.enqueue_many(
            session, [outbox.NewJob(kind, payload(i), **options) for i in range(n)]
        )
        session.commit()
    return handles


def set_state(engine: sa.Engine, state: str, *handles: outbox.Enqueued) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE outbox_jobs SET state = :s, attempt = 3, last_error = 'boom' "
                    "WHERE uuid = ANY(:u)"),
            {"s": state, "u": [h.uuid for h in handles]},
        )  # fmt: skip


def attempt(
    engine: sa.Engine, handler: Callable[[outbox.Job], None], relay: str = "host:1:a"
) -> None:
    """One attempt of the next job, as a relay makes it: claimed, run, recorded."""
    registry = outbox.Registry()
    registry.register(TYPE, handler)
    limits = AttemptLimits(default=5, types=(TYPE,))
    with engine.connect() as conn:
        [job] = claim_batch(
            conn, queues=["default"], limit=1, lease=timedelta(seconds=30), relay=relay,
            limits=limits,
        )  # fmt: skip
        complete.complete(conn, relay, [execute.run(registry[TYPE], job)], registry)
    with engine.begin() as conn:  # skip the backoff
        conn.execute(sa.text("UPDATE outbox_jobs SET run_at = now() WHERE state = 'pending'"))


def fails(message: str) -> Callable[[outbox.Job], None]:
    def handler(job: outbox.Job) -> None:
        raise RuntimeError(message.format(attempt=job.attempt))

    return handler


def succeeds(job: outbox.Job) -> None:
    return None


def listed(page: str) -> list[str]:
    """The uuids in the jobs table of a page, in order."""
    table = page.partition('<table id="jobs">')[2].partition("</table>")[0]
    return re.findall(r'href="[^"]*/jobs/([0-9a-f-]{36})"', table)


def seal_everything(engine: sa.Engine) -> None:
    def sealed_all() -> bool:
        with engine.connect() as conn:
            seal.seal_all(conn)
        return bool(seal_lag_rows(engine) == 0)

    wait_for(sealed_all, timeout=SEALING, what="every history row to be sealed")


def seal_lag_rows(engine: sa.Engine) -> int:
    return int(scalar(engine, """
        SELECT count(*) FROM outbox_history
        WHERE xid >= (SELECT coalesce(max(xid_to), 0) FROM outbox_seals)
    """))  # fmt: skip


def tamper(engine: sa.Engine, sql: str) -> None:
    """What a superuser can do: set the append-only triggers aside and change history."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text(sql))


def refused(response: Any, status: int, *messages: str) -> None:
    """An error page: the status, the message in its alert, no traceback."""
    assert response.status_code == status, response.text
    alert = response.text.partition('role="alert">')[2].partition("</div>")[0]
    for message in messages:
        assert _html(message) in alert, alert
    assert "Traceback" not in response.text


# -- the overview ------------------------------------------------------------------------


def test_overview_shows_cards_queues_charts_and_blocked_keys_linking_to_their_key(
    db: sa.Engine,
) -> None:
    enqueue(db, 1, max_attempts=1)
    attempt(db, succeeds)
    head, waiting = enqueue(db, 2, key="acct/7 ü", queue="billing")
    set_state(db, "dead", head)
    enqueue(db, 1, queue="mail", delay=timedelta(hours=1))
    client = console(db)

    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["server-timing"].startswith("app;dur=")
    text = page.text
    by_label = {
        label: value for value, label in re.findall(
            r'<div class="big[^"]*">([^<]+)</div><div class="label">(?:<a[^>]*>)?([a-z ]+)', text
        )
    }  # fmt: skip
    assert by_label == {
        "ready": "1", "running": "0", "scheduled": "1", "dead": "1", "blocked keys": "1",
        "relays alive": "0",
    }  # fmt: skip
    assert text.count('<svg class="chart"') == 2
    assert re.search(r"<title>\d\d:\d\d UTC: 1 succeeded</title>", text)
    assert "Succeeded: 1</figcaption>" in text
    assert 'href="/jobs?queue=billing"' in text
    assert 'href="/jobs?queue=mail"' in text
    assert 'href="/jobs?queue=billing&amp;state=dead"' in text
    link = f'href="/keys/{quote("acct/7 ü", safe="")}"'
    assert link in text
    assert f'href="/jobs/{head.uuid}"' in text

    key_page = client.get(f"/keys/{quote('acct/7 ü')}")
    assert key_page.status_code == 200
    assert "<code>acct/7 ü</code>" in key_page.text
    assert [str(head.uuid), str(waiting.uuid)] == re.findall(
        r'/jobs/([0-9a-f-]{36})"', key_page.text.partition('id="live-jobs"')[2].partition(
            "</table>")[0]
    )  # fmt: skip

    fragment = client.get("/overview")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert 'class="cards"' in fragment.text
    assert fragment.text.count('<svg class="chart"') == 2


def test_overview_of_an_empty_database_says_every_queue_is_empty(db: sa.Engine) -> None:
    page = console(db).get("/")
    assert page.status_code == 200
    assert "No live jobs: every queue is empty." in page.text
    assert "Succeeded: 0</figcaption>" in page.text
    assert "Blocked keys</h2>" not in page.text


# -- jobs --------------------------------------------------------------------------------


def test_jobs_filter_by_state_queue_type_key_and_since(db: sa.Engine) -> None:
    [ready] = enqueue(db, 1, queue="q1", key="k1")
    [dead] = enqueue(db, 1, queue="q2", key="k2", type="other.job")
    [later] = enqueue(db, 1, queue="q1", delay=timedelta(hours=1))
    [old] = enqueue(db, 1, queue="q2")
    set_state(db, "dead", dead)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_jobs SET enqueued_at = now() - interval '2 hours' "
                             "WHERE uuid = :u"), {"u": old.uuid})  # fmt: skip
        cutoff = conn.execute(sa.text("SELECT now() - interval '1 hour'")).scalar_one()
    client = console(db)

    def shown(query: str) -> set[str]:
        page = client.get(f"/jobs?{query}")
        assert page.status_code == 200, page.text
        return set(listed(page.text))

    every = {str(h.uuid) for h in (ready, dead, later, old)}
    assert shown("") == every
    assert shown("state=dead") == {str(dead.uuid)}
    assert shown("state=scheduled") == {str(later.uuid)}
    assert shown("state=pending") == {str(ready.uuid), str(old.uuid)}
    assert shown("state=pending&state=dead") == {str(ready.uuid), str(old.uuid), str(dead.uuid)}
    assert shown("state=DEAD") == {str(dead.uuid)}
    assert shown("queue=q1") == {str(ready.uuid), str(later.uuid)}
    assert shown("type=other.job") == {str(dead.uuid)}
    assert shown("key=k1") == {str(ready.uuid)}
    assert shown("key=%20k1%20") == {str(ready.uuid)}
    assert shown("since=1h") == every - {str(old.uuid)}
    assert shown(f"since={quote(cutoff.isoformat())}") == every - {str(old.uuid)}
    assert shown("queue=q2&state=dead") == {str(dead.uuid)}
    assert shown("queue=nowhere") == set()

    page = client.get("/jobs?queue=q1&state=scheduled")
    assert 'value="q1"' in page.text
    assert '<option value="scheduled" selected>' in page.text
    assert "1 live job matches." in page.text
    assert "No live job matches." in client.get("/jobs?queue=nowhere").text


def test_jobs_are_paged_by_id_without_offset_and_the_next_link_carries_the_filter(
    db: sa.Engine,
) -> None:
    handles = enqueue(db, 120, queue="paged")
    enqueue(db, 5, queue="elsewhere")
    client = console(db)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sa.event.listen(db, "before_cursor_execute", seen)
    try:
        uuids: list[str] = []
        url: str | None = "/jobs?queue=paged"
        pages = 0
        while url is not None:
            page = client.get(url)
            assert page.status_code == 200
            assert "120 live jobs match." in page.text
            uuids += listed(page.text)
            pages += 1
            found = re.search(r'<a id="next" href="([^"]+)"', page.text)
            url = found[1].replace("&amp;", "&") if found else None
            if url is not None:
                assert "queue=paged" in url
                assert re.search(r"after=\d+$", url)
    finally:
        sa.event.remove(db, "before_cursor_execute", seen)
    assert pages == 3
    assert uuids == [str(h.uuid) for h in handles]
    assert "first page" in page.text
    code = ["\n".join(ln for ln in s.splitlines() if not ln.lstrip().startswith("--"))
            for s in statements]  # fmt: skip
    assert code
    assert not [s for s in code if "OFFSET" in s.upper()]


def test_the_count_is_exact_to_ten_thousand_and_an_estimate_past_it(db: sa.Engine) -> None:
    enqueue(db, 1, queue="counted")
    client = console(db)
    assert "1 live job matches." in client.get("/jobs?queue=counted").text
    with db.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO outbox_jobs (uuid, type, queue, payload) "
            "SELECT gen_random_uuid(), 'bulk.job', 'counted', '{}' FROM generate_series(1, 10050)"
        ))  # fmt: skip
        conn.execute(sa.text("ANALYZE outbox_jobs"))
    page = client.get("/jobs?queue=counted")
    assert page.status_code == 200
    found = re.search(
        r"More than 10,000 live jobs match \(about ([\d,]+), as the planner", page.text
    )
    assert found, page.text.partition('id="count"')[2][:400]
    assert int(found[1].replace(",", "")) > 10_000
    assert len(listed(page.text)) == 50
    exact = client.get("/jobs?queue=counted&type=console.job")
    assert "1 live job matches." in exact.text


# -- one job -----------------------------------------------------------------------------


def test_a_live_job_shows_its_fields_and_a_timeline_of_every_attempt_relay_and_error(
    db: sa.Engine,
) -> None:
    [job] = enqueue(db, 1, key="acct:1", payload=lambda i: {"secret": "s3cr3t-value"})
    attempt(db, fails("bank timeout {attempt}"), relay="host:1:a")
    attempt(db, fails("bank timeout {attempt}"), relay="host:2:b")
    page = console(db).get(f"/jobs/{job.uuid}")
    assert page.status_code == 200
    text = page.text
    assert '<span class="state state-pending" id="state">pending</span>' in text
    assert "<dd>2 of 5</dd>" in text
    assert 'href="/keys/acct%3A1"' in text or 'href="/keys/acct:1"' in text
    timeline = text.partition('id="history"')[2].partition("</ol>")[0]
    events = re.findall(r'class="state ev-(\w+)"', timeline)
    assert events == ["enqueued", "claimed", "failed", "retried", "claimed", "failed", "retried"]
    assert "attempt 1" in timeline
    assert "attempt 2" in timeline
    assert "host:1:a" in timeline
    assert "host:2:b" in timeline
    assert "RuntimeError: bank timeout 1" in timeline
    assert "RuntimeError: bank timeout 2" in timeline
    tracebacks = re.findall(r"<summary>traceback</summary><pre>(.*?)</pre>", timeline, re.S)
    assert len(tracebacks) == 2
    assert all("bank timeout" in t for t in tracebacks)
    assert "next run" in timeline
    assert "last error" in text
    # the payload stays hidden until asked
    assert "s3cr3t-value" not in text
    assert f'hx-get="/jobs/{job.uuid}/payload"' in text
    assert "Hidden until asked" in text


def test_an_ended_job_shows_its_history_after_it_left_the_live_table(db: sa.Engine) -> None:
    [job] = enqueue(db, 1, key="acct:2")
    attempt(db, succeeds, relay="host:9:z")
    assert scalar(db, "SELECT count(*) FROM outbox_jobs") == 0
    page = console(db).get(f"/jobs/{job.uuid}")
    assert page.status_code == 200
    assert 'id="state">succeeded</span>' in page.text
    assert "This job has ended and left the live table" in page.text
    assert f"<dd>{TYPE}</dd>" in page.text
    assert "<dd>default</dd>" in page.text
    timeline = page.text.partition('id="history"')[2]
    assert re.findall(r'class="state ev-(\w+)"', timeline) == ["enqueued", "claimed", "succeeded"]
    assert "host:9:z" in timeline
    assert "took" in timeline


def test_the_payload_endpoint_answers_htmx_with_a_fragment_and_browsers_with_a_page(
    db: sa.Engine,
) -> None:
    [job] = enqueue(db, 1, payload=lambda i: {"note": "<b>bold</b>", "amount": 12})
    client = console(db)
    fragment = client.get(f"/jobs/{job.uuid}/payload", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert '<pre id="payload-json">' in fragment.text
    assert "&#34;note&#34;: &#34;&lt;b&gt;bold&lt;/b&gt;&#34;" in fragment.text
    assert "<b>bold</b>" not in fragment.text
    page = client.get(f"/jobs/{job.uuid}/payload")
    assert page.status_code == 200
    assert "<html" in page.text
    assert '<pre id="payload-json">' in page.text
    assert f'href="/jobs/{job.uuid}"' in page.text

    with db.begin() as conn:  # ended: the payload history kept answers
        operator.cancel(conn, [job.uuid], actor="test")
    ended = client.get(f"/jobs/{job.uuid}/payload", headers={"HX-Request": "true"})
    assert ended.status_code == 200
    assert "&#34;amount&#34;: 12" in ended.text


def test_a_redacted_payload_shows_only_its_sha256(db: sa.Engine) -> None:
    with db.connect() as conn:
        redaction.switch(conn, on=True)
    try:
        [job] = enqueue(db, 1, payload=lambda i: {"card": "4111 1111 1111 1111"})
    finally:
        with db.connect() as conn:
            redaction.switch(conn, on=False)
    text = scalar(db, "SELECT payload::text FROM outbox_jobs WHERE uuid = :u", u=job.uuid)
    with db.begin() as conn:
        operator.cancel(conn, [job.uuid], actor="test")
    page = console(db).get(f"/jobs/{job.uuid}/payload", headers={"HX-Request": "true"})
    assert page.status_code == 200
    assert "Payload redaction is on" in page.text
    digest = re.search(r'<code class="digest">([0-9a-f]{64})</code>', page.text)
    assert digest
    assert digest[1] == hashlib.sha256(text.encode()).hexdigest()
    assert "4111" not in page.text


# -- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["a/b/c", "account 42", "ключ/ü 🙂", "/lead", "50%?#&x", "a/../b", "x/./y", "c/"]
)
def test_a_key_page_lists_its_jobs_in_order_whatever_the_key_holds(db: sa.Engine, key: str) -> None:
    handles = enqueue(db, 3, key=key)
    enqueue(db, 1, key=key + "-other")
    set_state(db, "dead", handles[0])
    with db.begin() as conn:
        operator.cancel(conn, [handles[1].uuid], actor="auditor", reason="duplicate")
    client = console(db)
    page = client.get(f"/keys/{quote(key, safe='')}")
    assert page.status_code == 200, page.text
    assert f"<h1>Key <code>{_html(key)}</code></h1>" in page.text
    live = page.text.partition('id="live-jobs"')[2].partition("</table>")[0]
    assert re.findall(r'/jobs/([0-9a-f-]{36})"', live) == [
        str(handles[0].uuid),
        str(handles[2].uuid),
    ]
    assert 'state-dead">dead' in live
    history = page.text.partition('id="key-history"')[2].partition("</table>")[0]
    rows = re.findall(r'/jobs/([0-9a-f-]{36})".*?ev-(\w+)', history, re.S)
    assert rows == [(str(h.uuid), "enqueued") for h in handles] + [
        (str(handles[1].uuid), "cancelled")
    ]
    assert "auditor" in history
    assert "duplicate" in history
    # the links every other page makes reach it, not a key their path resolves to
    linking = ["/", f"/jobs?key={quote(key, safe='')}", f"/jobs/{handles[0].uuid}",
               f"/audit?key={quote(key, safe='')}"]  # fmt: skip
    for path in linking:
        links = set(re.findall(r'href="(/keys/[^"]+)"', client.get(path).text))
        assert len(links) == 1, (path, links)
        assert client.get(links.pop().replace("&amp;", "&")).text == page.text, path


def test_a_key_without_jobs_says_so_and_a_long_history_pages(db: sa.Engine) -> None:
    client = console(db)
    empty = client.get("/keys/nothing-here")
    assert empty.status_code == 200
    assert "None: every job of this key has ended." in empty.text
    assert "No history for key <code>nothing-here</code>" in empty.text
    enqueue(db, 101, key="busy")
    first = client.get("/keys/busy")
    assert len(re.findall(r"ev-enqueued", first.text)) == 100
    found = re.search(r'<a id="next" href="(/keys/busy\?after=\d+)"', first.text)
    assert found
    second = client.get(found[1])
    assert len(re.findall(r"ev-enqueued", second.text)) == 1
    assert 'id="next"' not in second.text
    # the live list shows the first 50 in order and links to the rest on the jobs page
    live = first.text.partition('id="live-jobs"')[2].partition("</table>")[0]
    assert live.count('class="uuid"><a href=') == 50
    assert 'id="all-live" href="/jobs?key=busy"' in first.text


# -- audit -------------------------------------------------------------------------------


def test_the_audit_page_shows_the_latest_seal_the_lag_and_the_filtered_trail(
    db: sa.Engine,
) -> None:
    client = console(db)
    assert "No seals yet" in client.get("/audit").text
    a = enqueue(db, 2, key="k-a", type="audit.a")
    [b] = enqueue(db, 1, key="k-b", type="audit.b")
    with db.begin() as conn:
        operator.cancel(conn, [b.uuid], actor="alice", reason="not needed")
    seal_everything(db)
    with db.connect() as conn:
        last = chain.latest_seal(conn)
    assert last is not None
    page = client.get("/audit")
    assert page.status_code == 200
    assert f'<code class="digest">{last.digest.hex()}</code>' in page.text
    assert f"<dd>{last.id} (seal)</dd>" in page.text
    assert re.search(r'<div class="big ">0s</div><div class="label">seal lag', page.text)
    assert 'id="trail"' not in page.text  # no filter: no trail

    def trail_of(query: str) -> list[tuple[str, str]]:
        got = client.get(f"/audit?{query}")
        assert got.status_code == 200, got.text
        body = got.text.partition('id="trail"')[2].partition("</table>")[0]
        return re.findall(r'/jobs/([0-9a-f-]{36})".*?ev-(\w+)', body, re.S)

    assert trail_of("key=k-a") == [(str(h.uuid), "enqueued") for h in a]
    assert trail_of("type=audit.b") == [(str(b.uuid), "enqueued"), (str(b.uuid), "cancelled")]
    assert trail_of("actor=alice") == [(str(b.uuid), "cancelled")]
    assert trail_of(f"job={a[1].uuid}") == [(str(a[1].uuid), "enqueued")]
    assert len(trail_of("since=1h")) == 4
    assert trail_of("until=2000-01-01") == []
    shown = client.get("/audit?actor=alice").text
    assert "not needed" in shown
    assert 'href="/audit/trail.csv?actor=alice"' in shown


def test_the_lag_card_shows_how_long_history_has_waited_for_a_seal(db: sa.Engine) -> None:
    enqueue(db, 1)
    with db.begin() as conn:
        conn.execute(sa.text("SELECT pg_sleep(0.2)"))
    page = console(db).get("/audit")
    assert page.status_code == 200
    lag = re.search(r'<div class="big [^"]*">([^<]+)</div><div class="label">seal lag', page.text)
    assert lag
    assert lag[1] != "0s"


def test_the_trail_csv_has_the_trail_columns_and_quotes_what_a_spreadsheet_would_run(
    db: sa.Engine,
) -> None:
    keys = ['=HYPERLINK("http://evil.example","x")', "+1", "-2", "@SUM(A1)", "plain"]
    for key in keys:
        enqueue(db, 1, key=key, type="csv.job")
    client = console(db)
    got = client.get("/audit/trail.csv?type=csv.job")
    assert got.status_code == 200
    assert got.headers["content-type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(
        r'attachment; filename="outbox-trail-\d{8}T\d{6}\.csv"', got.headers["content-disposition"]
    )
    rows = list(csv.reader(io.StringIO(got.text)))
    assert tuple(rows[0]) == trail.COLUMNS
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [r["key"] for r in records] == ["'" + k for k in keys[:4]] + ["plain"]
    assert all(r["event"] == "enqueued" and r["type"] == "csv.job" for r in records)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00$", r["at"]) for r in records)
    assert all(UUID(r["job_uuid"]) for r in records)
    refused(client.get("/audit/trail.csv"), 400, "give at least one filter")


def test_verify_reports_a_sound_chain_and_then_the_row_changed_behind_the_triggers(
    db: sa.Engine,
) -> None:
    enqueue(db, 5)
    seal_everything(db)
    client = console(db)
    page = client.get("/audit/verify")
    assert page.status_code == 200
    assert re.search(r"Chain verified: 1 seal\(s\), 5 history rows recomputed", page.text)
    fragment = client.get("/audit/verify", headers={"HX-Request": "true"})
    assert "<html" not in fragment.text
    assert 'id="verified"' in fragment.text
    victim = scalar(db, "SELECT id FROM outbox_history ORDER BY id OFFSET 2 LIMIT 1")
    tamper(db, f"UPDATE outbox_history SET payload = '{{\"n\": 1000000}}' WHERE id = {victim}")
    failed = client.get("/audit/verify")
    assert failed.status_code == 200
    assert re.search(f"Verification failed: [^<]*history row {victim} does not match", failed.text)
    assert 'class="notice bad" id="verified" role="alert"' in failed.text


# -- relays ------------------------------------------------------------------------------


@contextlib.contextmanager
def leading(engine: sa.Engine, name: str, chore: int) -> Iterator[None]:
    """A connection named as a relay's that holds the session lock of a chore."""
    with engine.connect() as conn:
        conn.execute(sa.text(f"SET application_name = 'outbox relay {name}'"))
        conn.execute(sa.text("SELECT pg_advisory_lock(2829, :c)"), {"c": chore})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(2829, :c)"), {"c": chore})
            conn.execute(sa.text("RESET application_name"))
            conn.commit()


def add_relay(engine: sa.Engine, name: str, expires: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO outbox_relays (relay, host, pid, queues, concurrency, types, version, "
            f"expires_at) VALUES (:r, 'box-1', 4242, ARRAY['default','mail'], 8, "
            f"ARRAY['{TYPE}'], '9.9.9', now() + interval '{expires}')"
        ), {"r": name})  # fmt: skip


def test_the_relays_page_lists_the_live_relays_and_the_leader_of_each_chore(
    db: sa.Engine,
) -> None:
    client = console(db)
    nobody = client.get("/relays")
    assert nobody.status_code == 200
    assert "No relay is alive" in nobody.text
    add_relay(db, "box-1:4242:alive", "1 minute")
    add_relay(db, "box-1:4141:gone", "-1 minute")
    with leading(db, "box-1:4242:alive", 3):
        page = client.get("/relays")
    assert page.status_code == 200
    table = page.text.partition('id="relays"')[2].partition("</table>")[0]
    assert "<code>box-1:4242:alive</code>" in table
    assert "gone" not in table
    assert "default, mail" in table
    assert TYPE in table
    assert "9.9.9" in table
    assert "<dt>sealing</dt><dd><code>box-1:4242:alive</code></dd>" in page.text


def test_a_relay_leading_in_another_database_is_not_shown_as_a_leader(
    db: sa.Engine, server: str
) -> None:
    with temporary_database(server, prefix="outbox_console_other") as other:
        elsewhere = create_engine(other, poolclass=sa.NullPool)
        try:
            with leading(elsewhere, "other-db-relay", 4):
                page = console(db).get("/relays")
        finally:
            elsewhere.dispose()
    assert "other-db-relay" not in page.text


# -- failures ----------------------------------------------------------------------------


def test_an_unknown_job_is_a_404_page_that_says_so(db: sa.Engine) -> None:
    client = console(db)
    unknown = uuid4()
    refused(client.get(f"/jobs/{unknown}"), 404, f"No job {unknown} here", "never enqueued")
    refused(client.get(f"/jobs/{unknown}/payload"), 404, f"No payload of job {unknown}")


@pytest.mark.parametrize(
    "path", ["/jobs/not-a-uuid", "/jobs/0b6c1d5e-zzzz", "/jobs/12345/payload", "/nowhere"]
)
def test_a_malformed_path_is_a_404_page(db: sa.Engine, path: str) -> None:
    refused(console(db).get(path), 404, "Not Found")


def test_find_goes_to_the_job_and_refuses_what_is_not_a_uuid(db: sa.Engine) -> None:
    client = console(db)
    [job] = enqueue(db, 1)
    found = client.get(f"/jobs/find?uuid=%20{job.uuid}%20", follow_redirects=False)
    assert found.status_code == 303
    assert found.headers["location"] == f"/jobs/{job.uuid}"
    assert client.get(f"/jobs/find?uuid={job.uuid}").status_code == 200
    refused(client.get("/jobs/find?uuid=0b6c1d5e-nope"), 400, "'0b6c1d5e-nope' is not a job uuid")
    refused(client.get("/jobs/find"), 400, "is not a job uuid")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=bogus", "'bogus' is not a state of a live job: use pending, scheduled, running"),
        ("state=succeeded", "succeeded jobs have left outbox_jobs; their history holds them"),
        ("state=cancelled", "`outbox audit trail`"),
        ("since=yesterdayish", "since: 'yesterdayish' is not a time"),
        ("after=-1", "after must be a job id (a whole number), not '-1'"),
        ("after=1e3", "after must be a job id"),
        ("key=" + "k" * 600, "key is longer than 500 characters"),
        ("queue=" + "q" * 501, "queue is longer than 500 characters"),
        ("type=" + "t" * 501, "type is longer than 500 characters"),
        ("since=99999999999d", "since: '99999999999d' is further back than any time"),
        ("key=a%00b", "key holds a NUL character"),
        ("queue=%00", "queue holds a NUL character"),
        ("type=%00", "type holds a NUL character"),
    ],
)
def test_bad_filters_are_a_400_page_with_the_message(
    db: sa.Engine, query: str, message: str
) -> None:
    refused(console(db).get(f"/jobs?{query}"), 400, message)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/keys/" + "k" * 600, "key is longer than 500 characters"),
        ("/keys/k?after=x", "after must be a job id"),
        ("/audit?job=zz", "job: 'zz' is not a job uuid"),
        ("/audit?since=yesterdayish", "since: 'yesterdayish' is not a time"),
        ("/audit?until=soon", "until: 'soon' is not a time"),
        ("/audit?key=" + "k" * 501, "key is longer than 500 characters"),
        ("/keys/a%00b", "key holds a NUL character"),
        ("/audit?since=99999999999d", "since: '99999999999d' is further back than any time"),
        ("/audit?until=99999999999d", "until: '99999999999d' is further back than any time"),
        ("/audit?key=a%00b", "key holds a NUL character"),
        ("/audit?type=%00", "type holds a NUL character"),
        ("/audit?actor=%00", "actor holds a NUL character"),
    ],
)
def test_bad_input_to_the_key_and_audit_pages_is_a_400_page(
    db: sa.Engine, path: str, message: str
) -> None:
    refused(console(db).get(path), 400, message)


@pytest.mark.parametrize(
    "path", ["/", "/jobs", "/relays", "/audit", "/jobs/0b6c1d5e-1111-4222-8333-444455556666"]
)
def test_a_database_out_of_reach_is_a_503_page(path: str) -> None:
    down = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/x",
        connect_args={"connect_timeout": 2},
        poolclass=sa.NullPool,
    )
    try:
        refused(console(down).get(path), 503, "The console cannot reach the database")
    finally:
        down.dispose()


def test_a_database_without_the_schema_is_a_503_saying_run_outbox_migrate(server: str) -> None:
    with temporary_database(server, prefix="outbox_console_empty", migrated=False) as empty:
        engine = create_engine(empty, poolclass=sa.NullPool)
        try:
            client = console(engine)
            for path in ("/", "/jobs", "/audit", "/relays", "/keys/k"):
                got = client.get(path)
                refused(got, 503, "does not hold the outbox schema", "run `outbox migrate`")
                assert "<h1>Schema missing</h1>" in got.text
        finally:
            engine.dispose()


def test_a_role_that_may_not_read_the_tables_is_a_503_saying_so(db: sa.Engine, dsn: str) -> None:
    with login_role(db, dsn, None) as stranger:
        got = console(stranger).get("/jobs")
    refused(got, 503, "The console's database role may not do this", "permission denied")


def test_the_auditor_role_reads_every_page(db: sa.Engine, dsn: str) -> None:
    [job] = enqueue(db, 1, key="k")
    with login_role(db, dsn, "outbox_auditor") as auditor:
        client = console(auditor)
        for path in ("/", "/overview", "/jobs?state=pending", f"/jobs/{job.uuid}",
                     f"/jobs/{job.uuid}/payload", "/keys/k", "/audit?key=k",
                     "/audit/trail.csv?key=k", "/audit/verify", "/relays"):  # fmt: skip
            got = client.get(path)
            assert got.status_code == 200, (path, got.text[-600:])


def test_a_query_past_the_statement_timeout_is_a_503_saying_so(db: sa.Engine) -> None:
    enqueue(db, 1)
    client = console(db, statement_timeout=timedelta(milliseconds=100))
    assert client.get("/jobs").status_code == 200
    with db.connect() as holder:
        holder.execute(sa.text("LOCK TABLE outbox_jobs IN ACCESS EXCLUSIVE MODE"))
        got = client.get("/jobs")
        holder.rollback()
    refused(
        got, 503, "ran longer than the console's statement timeout (100ms)", "Narrow the filter"
    )
    assert client.get("/jobs").status_code == 200


# -- hostile text ------------------------------------------------------------------------


def test_hostile_keys_types_errors_and_reasons_render_as_text_never_markup(db: sa.Engine) -> None:
    evil = f"{HOSTILE}\"'&"
    [job] = enqueue(db, 1, key=evil)
    attempt(db, fails(f"{HOSTILE} \"q\" 'q' \x1b[31m\x07 end"))
    set_state(db, "dead", job)
    with db.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO outbox_jobs (uuid, type, queue, key, payload) "
            "VALUES (gen_random_uuid(), :t, :q, :k, '{}')"
        ), {"t": f"t{HOSTILE}", "q": f"q{HOSTILE}", "k": evil})  # fmt: skip
        uuid = conn.execute(sa.text("SELECT uuid FROM outbox_jobs WHERE type <> :t"), {"t": TYPE})
        [other] = uuid.scalars()
        operator.cancel(conn, [other], actor=f"a{HOSTILE}", reason=f"r{HOSTILE}\"'")
        conn.execute(sa.text("INSERT INTO outbox_jobs (uuid, type, queue, key, payload) "
                             "VALUES (gen_random_uuid(), :t, :q, :k, '{}')"),
                     {"t": f"t{HOSTILE}", "q": f"q{HOSTILE}", "k": evil})  # fmt: skip
    client = console(db)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    pages = {
        "/": ["q" + escaped, escaped + "&#34;&#39;&amp;"],
        "/jobs": ["t" + escaped, escaped],
        f"/jobs?key={quote(evil, safe='')}": ['value="' + escaped + "&#34;&#39;&amp;" + '"'],
        f"/jobs/{job.uuid}": [escaped + " &#34;q&#34; &#39;q&#39;"],
        f"/jobs/{other}": ["a" + escaped, "r" + escaped + "&#34;&#39;"],
        f"/keys/{quote(evil, safe='')}": [escaped, "a" + escaped],
        f"/audit?key={quote(evil, safe='')}": ["r" + escaped, "a" + escaped],
    }
    for path, expected in pages.items():
        page = client.get(path)
        assert page.status_code == 200, (path, page.text)
        assert HOSTILE not in page.text, path
        assert "alert(1)</" not in page.text, path
        for text in expected:
            assert text in page.text, (path, text)
    link = re.search(r'href="(/keys/[^"]*script[^"]*)"', client.get("/").text)
    assert link
    assert "<" not in link[1]
    assert '"' not in link[1]
    assert client.get(link[1].replace("&amp;", "&")).status_code == 200
    shown = client.get(f"/jobs/{job.uuid}").text
    assert "\\x1b[31m\\x07 end" in shown  # control characters visible, as the commands show
    assert "\x1b" not in shown
    assert "\x07" not in shown


def test_hostile_text_in_bad_input_is_escaped_on_the_error_page(db: sa.Engine) -> None:
    got = console(db).get(f"/jobs?state={quote(HOSTILE)}")
    refused(got, 400, f"'{HOSTILE}' is not a state")
    assert HOSTILE not in got.text


# -- base path ---------------------------------------------------------------------------


def test_a_console_under_a_base_path_serves_pages_links_and_static_files_there(
    db: sa.Engine,
) -> None:
    [job] = enqueue(db, 1, key="k/1", queue="based")
    set_state(db, "dead", job)
    client = console(db, base_path="/outbox")
    home = client.get("/", follow_redirects=False)
    assert home.status_code in (302, 307)
    assert home.headers["location"] == "/outbox/"
    bare = client.get("/outbox", follow_redirects=False)
    assert bare.headers["location"].endswith("/outbox/")
    page = client.get("/outbox/")
    assert page.status_code == 200
    hrefs = re.findall(r'(?:href|src|action|hx-get)="([^"]+)"', page.text)
    assert hrefs
    assert all(h.startswith("/outbox/") for h in hrefs), hrefs
    assert 'href="/outbox/static/console.css"' in page.text
    for path in ("/outbox/static/console.css", "/outbox/static/htmx.min.js"):
        assert client.get(path).status_code == 200
    for path in ("/outbox/overview", "/outbox/jobs?queue=based", f"/outbox/jobs/{job.uuid}",
                 "/outbox/keys/k/1", "/outbox/audit", "/outbox/relays"):  # fmt: skip
        got = client.get(path)
        assert got.status_code == 200, path
        links = re.findall(r'(?:href|src|action|hx-get)="(/[^"]*)"', got.text)
        assert all(h.startswith("/outbox/") for h in links), (path, links)
    found = client.get(f"/outbox/jobs/find?uuid={job.uuid}", follow_redirects=False)
    assert found.headers["location"] == f"/outbox/jobs/{job.uuid}"
    assert client.get("/jobs").status_code == 404
    assert client.get("/static/console.css").status_code == 404


def _html(text: str) -> str:
    """``text`` as Jinja escapes it."""
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace('"', "&#34;").replace("'", "&#39;")
    )  # fmt: skip


@pytest.mark.parametrize("name", [".", ".."])
def test_the_keys_dot_and_dot_dot_have_pages_of_their_own(db: sa.Engine, name: str) -> None:
    [job] = enqueue(db, 1, key=name)
    client = console(db)
    page = client.get(f"/jobs/{job.uuid}")
    link = f'href="/keys?key={name}"'
    assert link in page.text
    shown = client.get(f"/keys?key={name}")
    assert shown.status_code == 200
    assert str(job.uuid) in shown.text
