"""Retry and cancel from the console: refused unless allowed, refused cross-site, recorded with
the actor; and basic-auth sign-in."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.testclient import TestClient

import outbox
from outbox.console import ConsoleConfig, create_app
from outbox.console.app import Console
from outbox.console.guard import ANONYMOUS
from outbox.database import create_engine
from tests.integration.helpers import history, jobs

USERS = {"alice": "s3cret", "bob": "other"}


def console(engine: sa.Engine, **config: Any) -> TestClient:
    return TestClient(create_app(engine, ConsoleConfig(**config)))


def enqueue(engine: sa.Engine, n: int = 1, **options: Any) -> list[outbox.Enqueued]:
    with Session(engine) as session:
        handles = outbox.enqueue_many(
            session, [outbox.NewJob("act.job", {"n": i}, **options) for i in range(n)]
        )
        session.commit()
    return handles


def set_state(engine: sa.Engine, state: str, *handles: outbox.Enqueued) -> None:
    lease = "now() + interval '1 minute'" if state == "running" else "NULL"
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE outbox_jobs SET state = :s, attempt = 3, lease_expires_at = {lease}, "
                    "relay = 'r' WHERE uuid = ANY(:u)"),
            {"s": state, "u": [h.uuid for h in handles]},
        )  # fmt: skip


def csrf(client: TestClient, path: str = "/jobs", **options: Any) -> str:
    """The anti-forgery token a page of this console carries."""
    page = client.get(path, **options)
    assert page.status_code == 200, page.text
    found = re.search(r'"X-CSRF-Token": "([0-9a-f]{64})"', page.text)
    assert found
    return found[1]


def snapshot(engine: sa.Engine) -> tuple[list[Any], list[Any]]:
    return [tuple(r) for r in jobs(engine)], [tuple(r) for r in history(engine)]


def alert(response: Any) -> str:
    return str(response.text.partition('role="alert">')[2].partition("</div>")[0])


def result(response: Any) -> str:
    return str(response.text.partition('id="result">')[2].partition("</div>")[0])


def confirmation(page: Any) -> dict[str, str]:
    """What a confirmation page's form sends besides the filter: the highest id it counted,
    the signature of the jobs it counted, and confirm=yes."""
    fields = dict(re.findall(r'name="(upto|counted)" value="([^"]*)"', page.text))
    assert set(fields) == {"upto", "counted"}, page.text
    return {**fields, "confirm": "yes"}


def signed_in(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- read-only ---------------------------------------------------------------------------


def test_a_read_only_console_shows_no_action_forms(db: sa.Engine) -> None:
    [dead, pending] = enqueue(db, 2, queue="ro")
    set_state(db, "dead", dead)
    client = console(db)
    for path in ("/jobs?queue=ro", f"/jobs/{dead.uuid}", f"/jobs/{pending.uuid}", "/"):
        page = client.get(path)
        assert page.status_code == 200
        assert 'method="post"' not in page.text, path
        assert "read-only · console (no sign-in)" in page.text
    allowed = console(db, allow_actions=True)
    assert 'action="/jobs/retry"' in allowed.get("/jobs?queue=ro").text
    assert 'action="/jobs/cancel"' in allowed.get("/jobs?queue=ro").text
    assert f'action="/jobs/{dead.uuid}/retry"' in allowed.get(f"/jobs/{dead.uuid}").text
    assert "actions allowed" in allowed.get("/").text
    unfiltered = allowed.get("/jobs").text  # the console never offers to act on all
    assert 'method="post"' not in unfiltered


def test_a_read_only_console_refuses_every_post_and_changes_nothing(db: sa.Engine) -> None:
    [dead, pending] = enqueue(db, 2, queue="ro")
    set_state(db, "dead", dead)
    before = snapshot(db)
    client = console(db)
    token = csrf(client)
    posts = {
        f"/jobs/{dead.uuid}/retry": {},
        f"/jobs/{pending.uuid}/cancel": {},
        "/jobs/retry": {"queue": "ro", "confirm": "yes"},
        "/jobs/cancel": {"queue": "ro", "confirm": "yes"},
    }
    for path, form in posts.items():
        got = client.post(path, data={"csrf_token": token, **form})
        assert got.status_code == 403, path
        assert "This console is read-only" in alert(got)
        assert "--allow-actions" in alert(got)
    assert snapshot(db) == before


def test_the_consoles_reading_transactions_are_read_only(db: sa.Engine) -> None:
    [job] = enqueue(db, 1)
    for config in (ConsoleConfig(), ConsoleConfig(allow_actions=True)):
        reader = Console(db, config)
        with (
            reader.reading() as connection,
            pytest.raises(sa.exc.DBAPIError, match="read-only transaction"),
        ):
            connection.execute(sa.text("DELETE FROM outbox_jobs"))
        with reader.reading() as connection:
            assert connection.execute(sa.text("SHOW transaction_read_only")).scalar_one() == "on"
            assert connection.execute(sa.text("SHOW statement_timeout")).scalar_one() == "5s"
    with pytest.raises(HTTPException) as refused, Console(db, ConsoleConfig()).acting():
        pass
    assert refused.value.status_code == 403
    assert [r.uuid for r in jobs(db)] == [job.uuid]


@pytest.mark.parametrize("allow_actions", [False, True])
def test_get_on_a_post_only_route_is_405(db: sa.Engine, allow_actions: bool) -> None:
    [job] = enqueue(db, 1)
    client = console(db, allow_actions=allow_actions)
    for path in (f"/jobs/{job.uuid}/retry", f"/jobs/{job.uuid}/cancel", "/jobs/retry",
                 "/jobs/cancel"):  # fmt: skip
        got = client.get(path)
        assert got.status_code == 405, path
        assert "<h1>Method not allowed</h1>" in got.text
    assert client.post("/jobs/find", data={}).status_code == 405


def test_a_405_names_the_allowed_method_in_an_allow_header(db: sa.Engine) -> None:
    got = console(db).get("/jobs/retry")
    assert got.status_code == 405
    assert got.headers.get("allow") == "POST"


# -- actions -----------------------------------------------------------------------------


def test_retry_revives_a_dead_job_recorded_with_the_actor_and_reason(db: sa.Engine) -> None:
    [job] = enqueue(db, 1)
    set_state(db, "dead", job)
    client = console(db, allow_actions=True)
    token = csrf(client, f"/jobs/{job.uuid}")
    done = client.post(
        f"/jobs/{job.uuid}/retry", data={"csrf_token": token, "reason": "  bug fixed in 1.2  "}
    )
    assert done.status_code == 200
    assert "Revived 1 job(s), recorded in history as done by" in result(done)
    assert f"<strong>{ANONYMOUS}</strong>" in result(done)
    assert f'<a id="back" href="/jobs/{job.uuid}">' in done.text
    [row] = jobs(db)
    assert (row.state, row.attempt) == ("pending", 0)
    last = history(db, job.uuid)[-1]
    assert (last.event, last.actor, last.reason) == ("revived", ANONYMOUS, "bug fixed in 1.2")
    page = client.get(f"/jobs/{job.uuid}").text
    assert f"<strong>{ANONYMOUS}</strong>" in page
    assert "reason: bug fixed in 1.2" in page


def test_cancel_ends_a_pending_job_recorded_with_the_signed_in_user(db: sa.Engine) -> None:
    [job] = enqueue(db, 1)
    client = console(db, allow_actions=True, users=USERS)
    auth = signed_in("alice", "s3cret")
    token = csrf(client, f"/jobs/{job.uuid}", headers=auth)
    done = client.post(f"/jobs/{job.uuid}/cancel", data={"csrf_token": token}, headers=auth)
    assert done.status_code == 200
    assert "Cancelled 1 job(s)" in result(done)
    assert "<strong>alice</strong>" in result(done)
    assert jobs(db) == []
    last = history(db, job.uuid)[-1]
    assert (last.event, last.actor, last.reason) == ("cancelled", "alice", None)


def test_an_action_a_job_cannot_take_is_skipped_and_explained(db: sa.Engine) -> None:
    pending, running = enqueue(db, 2)
    set_state(db, "running", running)
    client = console(db, allow_actions=True)
    token = csrf(client)
    retried = client.post(f"/jobs/{pending.uuid}/retry", data={"csrf_token": token})
    assert retried.status_code == 200
    assert "Revived 0 job(s)" in result(retried)
    assert f"{pending.uuid}</a> is pending, not dead" in retried.text
    cancelled = client.post(f"/jobs/{running.uuid}/cancel", data={"csrf_token": token})
    assert f"{running.uuid}</a> is running, not pending or dead" in cancelled.text
    gone = UUID("0b6c1d5e-1111-4222-8333-444455556666")
    missing = client.post(f"/jobs/{gone}/cancel", data={"csrf_token": token})
    assert f"{gone}</a> is not a live job (ended, or never was)" in missing.text
    assert [r.state for r in jobs(db)] == ["pending", "running"]
    assert [h.event for h in history(db)] == ["enqueued", "enqueued"]


def test_a_reason_longer_than_a_thousand_characters_is_refused(db: sa.Engine) -> None:
    [job] = enqueue(db, 1)
    client = console(db, allow_actions=True)
    got = client.post(
        f"/jobs/{job.uuid}/cancel", data={"csrf_token": csrf(client), "reason": "r" * 1001}
    )
    assert got.status_code == 400
    assert "the reason is longer than 1000 characters" in alert(got)
    assert len(jobs(db)) == 1


def test_a_filtered_action_confirms_the_counts_then_leaves_later_jobs_alone(
    db: sa.Engine,
) -> None:
    dead = enqueue(db, 3, queue="bulk")
    pending = enqueue(db, 2, queue="bulk")
    [running] = enqueue(db, 1, queue="bulk")
    [elsewhere] = enqueue(db, 1, queue="other")
    set_state(db, "dead", *dead, elsewhere)
    set_state(db, "running", running)
    client = console(db, allow_actions=True)
    token = csrf(client, "/jobs?queue=bulk")

    shown = client.post("/jobs/retry", data={"csrf_token": token, "queue": "bulk"})
    assert shown.status_code == 200
    assert "<h1>Confirm: revived</h1>" in shown.text
    assert re.search(
        r"6 live job\(s\) match this filter: <strong>3 to be revived</strong>, 3 left alone "
        r"\(2 pending, 1 running: only dead jobs are revived\)",
        shown.text,
    ), shown.text
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', shown.text))
    assert fields["queue"] == "bulk"
    assert fields["confirm"] == "yes"
    assert int(fields["upto"]) == max(scalar_ids(db, "bulk"))
    assert [h.event for h in history(db)].count("revived") == 0  # nothing done yet

    [late] = enqueue(db, 1, queue="bulk")  # arrives after the page was shown
    set_state(db, "dead", late)
    fields["reason"] = "replay after outage"
    done = client.post("/jobs/retry", data=fields)
    assert done.status_code == 200
    assert "Revived 3 job(s) of 6 matched" in result(done)
    assert 'href="/jobs?queue=bulk"' in done.text
    states = {r.uuid: r.state for r in jobs(db)}
    assert [states[h.uuid] for h in dead] == ["pending"] * 3
    assert states[late.uuid] == "dead"
    assert states[elsewhere.uuid] == "dead"
    assert states[running.uuid] == "running"
    revived = [h for h in history(db) if h.event == "revived"]
    assert sorted(h.job_uuid for h in revived) == sorted(h.uuid for h in dead)
    assert {(h.actor, h.reason) for h in revived} == {(ANONYMOUS, "replay after outage")}
    assert all(states[h.uuid] == "pending" for h in pending)


def scalar_ids(engine: sa.Engine, queue: str) -> list[int]:
    return [r.id for r in jobs(engine, "queue = :q", q=queue)]


def test_a_filtered_cancel_with_nothing_eligible_says_there_is_nothing_to_do(
    db: sa.Engine,
) -> None:
    [running] = enqueue(db, 1, queue="busy")
    set_state(db, "running", running)
    client = console(db, allow_actions=True)
    token = csrf(client)
    shown = client.post("/jobs/cancel", data={"csrf_token": token, "queue": "busy"})
    assert shown.status_code == 200
    assert "Nothing to do: no matching job is pending or scheduled or dead." in shown.text
    assert 'id="confirm"' not in shown.text
    assert [r.state for r in jobs(db)] == ["running"]


def test_a_filtered_cancel_by_state_and_key_cancels_only_those(db: sa.Engine) -> None:
    mine = enqueue(db, 2, key="acct/1")
    [other] = enqueue(db, 1, key="acct/2")
    client = console(db, allow_actions=True)
    token = csrf(client)
    form = {"csrf_token": token, "key": "acct/1", "state": "pending"}
    shown = client.post("/jobs/cancel", data=form)
    assert "<strong>2 to be cancelled</strong>" in shown.text
    done = client.post("/jobs/cancel", data={**form, **confirmation(shown)})
    assert "Cancelled 2 job(s) of 2 matched" in result(done)
    assert [r.uuid for r in jobs(db)] == [other.uuid]
    assert {h.job_uuid for h in history(db) if h.event == "cancelled"} == {h.uuid for h in mine}


@pytest.mark.parametrize("form", [{}, {"queue": "  "}, {"state": ""}, {"after": "5"}])
def test_a_filtered_action_without_a_filter_is_refused(db: sa.Engine, form: dict[str, str]) -> None:
    [job] = enqueue(db, 1)
    set_state(db, "dead", job)
    client = console(db, allow_actions=True)
    token = csrf(client)
    for verb in ("retry", "cancel"):
        got = client.post(f"/jobs/{verb}", data={"csrf_token": token, "confirm": "yes", **form})
        assert got.status_code == 400
        assert "choose jobs with a filter first: the console never acts on all" in alert(got)
    assert [r.state for r in jobs(db)] == ["dead"]


def test_a_filtered_action_with_a_bad_filter_is_refused(db: sa.Engine) -> None:
    client = console(db, allow_actions=True)
    got = client.post("/jobs/cancel", data={"csrf_token": csrf(client), "state": "succeeded"})
    assert got.status_code == 400
    assert "succeeded jobs have left outbox_jobs" in alert(got)


# -- cross-site requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "headers", "why"),
    [
        (None, {}, "the form carries no valid token of this console"),
        ("0" * 64, {}, "the form carries no valid token of this console"),
        ("page", {"Origin": "https://evil.example"}, "came from https://evil.example"),
        ("page", {"Origin": "null"}, "an opaque origin"),
        ("page", {"Sec-Fetch-Site": "cross-site"}, "another site (Sec-Fetch-Site: cross-site)"),
        ("page", {"Sec-Fetch-Site": "same-site"}, "another site (Sec-Fetch-Site: same-site)"),
    ],
)
def test_a_cross_site_post_is_refused_and_changes_nothing(
    db: sa.Engine, token: str | None, headers: dict[str, str], why: str
) -> None:
    [job] = enqueue(db, 1, queue="x")
    set_state(db, "dead", job)
    before = snapshot(db)
    client = console(db, allow_actions=True)
    sent = csrf(client) if token == "page" else token
    form = {} if sent is None else {"csrf_token": sent}
    for path, extra in ((f"/jobs/{job.uuid}/retry", {}), ("/jobs/cancel", {"queue": "x"})):
        got = client.post(path, data={**form, **extra, "confirm": "yes"}, headers=headers)
        assert got.status_code == 403, (path, got.text)
        assert "Refused as a cross-site request" in alert(got)
        assert why in alert(got)
    assert snapshot(db) == before


def test_a_post_from_the_consoles_own_origin_or_with_the_htmx_header_is_accepted(
    db: sa.Engine,
) -> None:
    first, second = enqueue(db, 2)
    client = console(db, allow_actions=True)
    token = csrf(client)
    own = client.post(
        f"/jobs/{first.uuid}/cancel", data={"csrf_token": token},
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )  # fmt: skip
    assert own.status_code == 200
    by_header = client.post(
        f"/jobs/{second.uuid}/cancel", headers={"X-CSRF-Token": token, "HX-Request": "true"}
    )
    assert by_header.status_code == 200
    assert jobs(db) == []


def test_a_token_is_bound_to_the_user_and_the_consoles_secret(db: sa.Engine) -> None:
    [job] = enqueue(db, 1)
    secret = b"s" * 32
    client = console(db, allow_actions=True, users=USERS, secret=secret)
    bobs = csrf(client, headers=signed_in("bob", "other"))
    as_alice = client.post(
        f"/jobs/{job.uuid}/cancel", data={"csrf_token": bobs}, headers=signed_in("alice", "s3cret")
    )
    assert as_alice.status_code == 403
    restarted = console(db, allow_actions=True, users=USERS)  # a new secret
    assert csrf(restarted, headers=signed_in("bob", "other")) != bobs
    shared = console(db, allow_actions=True, users=USERS, secret=secret)
    assert csrf(shared, headers=signed_in("bob", "other")) == bobs
    assert len(jobs(db)) == 1


# -- sign-in -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        signed_in("alice", "wrong"),
        signed_in("mallory", "s3cret"),
        signed_in("alice", ""),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic not-base64!"},
    ],
)
def test_sign_in_refuses_missing_or_wrong_credentials_with_401(
    db: sa.Engine, headers: dict[str, str]
) -> None:
    client = console(db, users=USERS)
    for path in ("/", "/jobs", "/audit", "/static/console.css", "/nowhere"):
        got = client.get(path, headers=headers)
        assert got.status_code == 401, path
        assert got.headers["www-authenticate"] == 'Basic realm="outbox", charset="UTF-8"'
        assert "sign in" in got.text
    assert client.post("/jobs/retry", headers=headers).status_code == 401


def test_a_signed_in_user_is_named_in_the_header_bar_and_as_the_actor(db: sa.Engine) -> None:
    [job] = enqueue(db, 1)
    set_state(db, "dead", job)
    client = console(db, users=USERS, allow_actions=True)
    page = client.get("/", headers=signed_in("bob", "other"))
    assert page.status_code == 200
    assert '<span class="mode" title="outbox ' in page.text
    assert "actions allowed · bob</span>" in page.text
    token = csrf(client, headers=signed_in("bob", "other"))
    done = client.post(
        f"/jobs/{job.uuid}/retry", data={"csrf_token": token, "reason": "on call"},
        headers=signed_in("bob", "other"),
    )  # fmt: skip
    assert "<strong>bob</strong>" in result(done)
    last = history(db, job.uuid)[-1]
    assert (last.event, last.actor, last.reason) == ("revived", "bob", "on call")


def test_actions_under_a_base_path(db: sa.Engine) -> None:
    [job] = enqueue(db, 1, queue="based")
    set_state(db, "dead", job)
    client = console(db, allow_actions=True, base_path="/outbox")
    page = client.get(f"/outbox/jobs/{job.uuid}")
    assert f'action="/outbox/jobs/{job.uuid}/retry"' in page.text
    token = csrf(client, "/outbox/jobs?queue=based")
    shown = client.post("/outbox/jobs/retry", data={"csrf_token": token, "queue": "based"})
    assert 'action="/outbox/jobs/retry"' in shown.text
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', shown.text))
    done = client.post("/outbox/jobs/retry", data=fields)
    assert "Revived 1 job(s) of 1 matched" in result(done)
    assert 'href="/outbox/jobs?queue=based"' in done.text
    assert client.post(f"/jobs/{job.uuid}/retry", data={"csrf_token": token}).status_code == 404


def test_the_jobs_pages_action_forms_carry_the_filter_only(db: sa.Engine) -> None:
    """A link to /jobs?queue=x&confirm=yes must not turn the first step of a filtered action
    into the second: the forms carry the filter, never what the confirmation page adds."""
    [job] = enqueue(db, 1, queue="lured")
    set_state(db, "dead", job)
    client = console(db, allow_actions=True)
    page = client.get("/jobs?queue=lured&confirm=yes&upto=999999&reason=lured&after=0")
    forms = re.findall(r'<form method="post" action="/jobs/(\w+)">(.*?)</form>', page.text, re.S)
    assert [verb for verb, _ in forms] == ["retry", "cancel"]
    for _, form in forms:
        fields = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form)
        assert [name for name, _ in fields] == ["csrf_token", "queue"]
        posted = client.post("/jobs/retry", data=dict(fields))
        assert "<h1>Confirm: revived</h1>" in posted.text
    assert [r.state for r in jobs(db)] == ["dead"]


def test_a_reason_holding_a_nul_character_is_refused(db: sa.Engine) -> None:
    [job] = enqueue(db, 1, queue="nul")
    client = console(db, allow_actions=True)
    token = csrf(client)
    for path, form in ((f"/jobs/{job.uuid}/cancel", {}), ("/jobs/cancel", {"queue": "nul"})):
        got = client.post(path, data={"csrf_token": token, "reason": "a\x00b", **form})
        assert got.status_code == 400, path
        assert "the reason holds a NUL character" in alert(got)
    assert len(jobs(db)) == 1


@pytest.mark.parametrize("upto", [None, "", "-5", "1e3", "all"])
def test_a_confirmation_without_the_highest_id_it_showed_is_refused(
    db: sa.Engine, upto: str | None
) -> None:
    [job] = enqueue(db, 1, queue="guarded")
    client = console(db, allow_actions=True)
    form = {"csrf_token": csrf(client), "queue": "guarded", "confirm": "yes"}
    if upto is not None:
        form["upto"] = upto
    got = client.post("/jobs/cancel", data=form)
    assert got.status_code == 400
    assert "the confirmation does not say which jobs it counted" in alert(got)
    assert [r.uuid for r in jobs(db)] == [job.uuid]


def test_a_confirmed_action_takes_only_the_jobs_it_counted_and_asks_again_when_they_changed(
    db: sa.Engine,
) -> None:
    first, running, last = enqueue(db, 3, queue="counted")
    set_state(db, "dead", first, last)
    set_state(db, "running", running)
    client = console(db, allow_actions=True)
    form = {"csrf_token": csrf(client), "queue": "counted", "state": "dead"}
    shown = client.post("/jobs/retry", data=form)
    assert "<strong>2 to be revived</strong>" in shown.text
    set_state(db, "dead", running)  # it died after the count, below the highest id counted
    again = client.post("/jobs/retry", data={**form, **confirmation(shown)})
    assert "The matching jobs changed since they were counted: nothing was done" in again.text
    assert "<strong>3 to be revived</strong>" in again.text
    assert [r.state for r in jobs(db)] == ["dead", "dead", "dead"]
    done = client.post("/jobs/retry", data={**form, **confirmation(again)})
    assert "Revived 3 job(s) of 3 matched" in result(done)


def test_a_confirmed_action_stops_at_the_statement_timeout_in_every_batch(db: sa.Engine) -> None:
    [job] = enqueue(db, 1, queue="locked")
    set_state(db, "dead", job)
    client = console(db, allow_actions=True, statement_timeout=timedelta(milliseconds=200))
    form = {"csrf_token": csrf(client), "queue": "locked"}
    shown = client.post("/jobs/cancel", data=form)
    with db.connect() as holder:
        holder.execute(sa.text("SELECT 1 FROM outbox_jobs WHERE uuid = :u FOR UPDATE"),
                       {"u": job.uuid})  # fmt: skip
        got = client.post("/jobs/cancel", data={**form, **confirmation(shown)})
        holder.rollback()
    assert got.status_code == 503
    assert "statement timeout" in alert(got)
    assert [r.uuid for r in jobs(db)] == [job.uuid]


def test_a_proxy_that_signs_users_in_names_the_actor_in_its_header(db: sa.Engine) -> None:
    [job] = enqueue(db, 1)
    set_state(db, "dead", job)
    client = console(db, allow_actions=True, user_header="X-Forwarded-User")
    nobody = client.get("/jobs")
    assert nobody.status_code == 401
    assert "did not name the user (X-Forwarded-User)" in nobody.text
    carol = {"X-Forwarded-User": "carol@example.com"}
    token = csrf(client, f"/jobs/{job.uuid}", headers=carol)
    done = client.post(f"/jobs/{job.uuid}/retry", data={"csrf_token": token}, headers=carol)
    assert "Revived 1 job(s)" in result(done)
    assert history(db, job.uuid)[-1].actor == "carol@example.com"


def test_every_answer_refuses_to_be_framed_and_pages_are_not_cached(db: sa.Engine) -> None:
    client = console(db)
    for path in ("/", "/jobs", "/nowhere"):
        got = client.get(path)
        assert got.headers["x-frame-options"] == "DENY", path
        assert got.headers["content-security-policy"] == "frame-ancestors 'none'", path
        assert got.headers["cache-control"] == "no-store", path
        assert got.headers["x-content-type-options"] == "nosniff", path
    assert "cache-control" not in client.get("/static/console.css").headers


def test_a_console_whose_connections_are_all_busy_answers_a_clear_503(db: sa.Engine) -> None:
    url = db.url.render_as_string(hide_password=False)
    small = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        client = TestClient(create_app(small, ConsoleConfig()))
        with small.connect():
            got = client.get("/jobs")
        assert got.status_code == 503
        assert "Every database connection of the console was busy" in alert(got)
    finally:
        small.dispose()
