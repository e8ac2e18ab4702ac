"""The console as an operator uses it, in chromium: every click goes through the real pages,
htmx and forms of ``outbox ui``, and a real relay runs what the console retries.

The tour also takes the documentation's screenshots (docs/howto/console.md); they are written
into docs/images/console/ when OUTBOX_UPDATE_SCREENSHOTS=1 (tests/browser/conftest.py).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

import outbox
from outbox import schema
from outbox.audit import seal
from outbox.console.guard import ANONYMOUS
from tests.integration.helpers import history, jobs
from tests.integration.relay_harness import SEALING, running_relay, scalar, wait_for

PAYMENT = {
    "account": "acct_42",
    "order": "ord_7f3a91",
    "amount": {"currency": "EUR", "value": "129.90"},
    "card": "tok_visa_4242",
}


class GatewayTimeout(Exception):
    """What the payment gateway of the tour raises while it is down."""


def enqueue(db: sa.Engine, *new: outbox.NewJob) -> list[outbox.Enqueued]:
    with Session(db) as session:
        handles = outbox.enqueue_many(session, list(new))
        session.commit()
    return handles


def set_dead(db: sa.Engine, *handles: outbox.Enqueued) -> None:
    """Dead as a relay leaves a job after its last attempt (tests/integration/test_operator.py)."""
    with db.begin() as conn:
        conn.execute(
            sa.text("UPDATE outbox_jobs SET state = 'dead', relay = 'r', attempt = 3, "
                    "max_attempts = 3, last_error = 'TimeoutError: upstream did not answer' "
                    "WHERE uuid = ANY(:u)"),
            {"u": [h.uuid for h in handles]},
        )  # fmt: skip


def shop(gateway_down: set[UUID]) -> outbox.Registry:
    """The handlers of a small shop. A payment in ``gateway_down`` fails (once: the gateway
    is back by the time it is retried), as does a webhook to an unreachable address."""
    registry = outbox.Registry()

    def charge(payment: dict[str, Any]) -> None:
        amount = payment["amount"]
        raise GatewayTimeout(
            f"gateway did not answer within 10s charging {amount['value']} {amount['currency']}"
        )

    @registry.handler("payment.capture", queue="payments")
    def capture(job: outbox.Job) -> None:
        if job.uuid in gateway_down:
            gateway_down.discard(job.uuid)
            charge(job.payload)

    @registry.handler("webhook.deliver", queue="webhooks")
    def deliver(job: outbox.Job) -> None:
        if "unreachable" in job.payload["url"]:
            raise ConnectionRefusedError(f"connection refused: {job.payload['url']}")

    for type, queue in [
        ("ledger.post", "payments"), ("receipt.send", "payments"), ("email.send", "emails"),
        ("invoice.render", "reports"), ("report.monthly", "reports"),
    ]:  # fmt: skip
        registry.register(type, lambda job: None, queue=queue)
    return registry


def backfill_last_hour(db: sa.Engine, relay: str) -> None:
    """History of the hour before the test, minute by minute, for the overview's charts: the
    jobs the tour itself runs all end in its last minute."""
    kinds = [
        ("email.send", "emails"), ("invoice.render", "reports"), ("webhook.deliver", "webhooks"),
    ]  # fmt: skip
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rows: list[dict[str, Any]] = []
    for m in range(1, 59):
        start = now - timedelta(minutes=m)
        busy = 26 + round(12 * math.sin(m / 7)) + (m * 7) % 9
        outcomes = ["succeeded"] * busy + ["retried"] * (m % 5 == 0) * (m % 3 + 1)
        outcomes += ["dead"] * (m in (23, 47))
        for n, event in enumerate(outcomes):
            type, queue = kinds[n % 3]
            error = None
            if event != "succeeded":
                error = {"type": "TimeoutError", "message": "upstream did not answer within 10s",
                         "traceback": None}  # fmt: skip
            rows.append({
                "job_uuid": uuid4(), "event": event, "type": type, "queue": queue,
                "attempt": 1, "relay": relay, "duration_ms": 4 + (n * 37 + m * 11) % 90,
                "error": error, "at": start + timedelta(seconds=n * 59 / len(outcomes)),
            })  # fmt: skip
    with db.begin() as conn:
        conn.execute(sa.insert(schema.history), rows)


def screenshot(page: Page, folder: Path, name: str) -> None:
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes().startswith(b"\x89PNG"), f"{path} is not a PNG"


def test_an_operator_finds_a_dead_job_reads_it_and_retries_it_until_a_relay_runs_it(
    db: sa.Engine, dsn: str, console: str, page: Page, screenshots: Path
) -> None:
    gateway_down: set[UUID] = set()
    [dead_payment, *waiting] = enqueue(
        db,
        outbox.NewJob("payment.capture", PAYMENT, key="account:42", queue="payments",
                      max_attempts=1),
        outbox.NewJob("ledger.post", {"order": "ord_7f3a91", "debit": "acct_42"},
                      key="account:42", queue="payments"),
        outbox.NewJob("receipt.send", {"order": "ord_7f3a91"}, key="account:42",
                      queue="payments"),
        outbox.NewJob("payment.capture", {**PAYMENT, "order": "ord_7f3a92"}, key="account:42",
                      queue="payments"),
    )  # fmt: skip
    gateway_down.add(dead_payment.uuid)
    enqueue(
        db,
        outbox.NewJob("webhook.deliver", {"url": "https://unreachable.example/hook", "event":
                      "order.paid"}, queue="webhooks", max_attempts=1),
        *[outbox.NewJob("email.send", {"to": f"customer{i}@example.com", "template": "welcome"},
                        queue="emails") for i in range(30)],
        *[outbox.NewJob("invoice.render", {"invoice": f"inv_{i:04}"}, queue="reports")
          for i in range(10)],
        *[outbox.NewJob("report.monthly", {"month": "2026-11", "shop": shop_name},
                        queue="reports", delay=timedelta(hours=3)) for shop_name in "abc"],
    )  # fmt: skip
    with running_relay(shop(gateway_down), dsn) as relay:
        wait_for(
            lambda: scalar(db, "SELECT count(*) FILTER (WHERE state = 'dead') = 2 "
                               "AND count(*) = 2 + 3 + 3 FROM outbox_jobs"),
            what="the relay to run the shop's jobs, leaving two dead",
        )  # fmt: skip
        backfill_last_hour(db, relay.relay)

        page.goto(f"{console}/")
        expect(page.locator(".card", has_text="dead").locator(".big")).to_have_text("2")
        expect(page.locator(".card", has_text="blocked keys").locator(".big")).to_have_text("1")
        expect(page.locator(".card", has_text="relays alive").locator(".big")).to_have_text("1")
        succeeded_bars = page.locator("svg.chart").first.locator("rect")
        assert succeeded_bars.count() >= 50, "the succeeded chart has a bar for most minutes"
        expect(page.locator("main table").first).to_contain_text("payments")
        screenshot(page, screenshots, "overview.png")

        page.get_by_role("link", name="Jobs", exact=True).click()
        page.locator("select[name=state]").select_option("dead")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(re.compile(r"/jobs\?state=dead"))
        expect(page.locator("#jobs tbody tr")).to_have_count(2)
        expect(page.locator("#count")).to_contain_text("2 live jobs match")
        screenshot(page, screenshots, "jobs-dead.png")

        row = page.locator("#jobs tbody tr", has_text="payment.capture")
        expect(row).to_contain_text("gateway did not answer within 10s")
        row.locator("td.uuid a").click()
        job_page = f"{console}/jobs/{dead_payment.uuid}"
        page.wait_for_url(job_page)
        expect(page.locator("#state")).to_have_text("dead")
        expect(page.locator("#payload-json")).to_have_count(0)
        page.locator("#show-payload").click()
        expect(page.locator("#payload-json")).to_be_visible()
        assert json.loads(page.locator("#payload-json").inner_text()) == PAYMENT

        page.locator("dl.fields").get_by_role("link", name="account:42").click()
        expect(page.locator("h1")).to_have_text("Key account:42")
        live = page.locator("#live-jobs tbody tr")
        expect(live).to_have_count(4)
        expect(live.nth(0)).to_contain_text(str(dead_payment.uuid))
        expect(live.nth(0).locator(".state")).to_have_text("dead")
        for n, handle in enumerate(waiting, start=1):
            expect(live.nth(n)).to_contain_text(str(handle.uuid))
            expect(live.nth(n).locator(".state")).to_have_text("pending")

        page.get_by_role("link", name="Relays").click()
        expect(page.locator("#relays tbody tr")).to_have_count(1)
        expect(page.locator("#relays")).to_contain_text(relay.relay)
        screenshot(page, screenshots, "relays.png")

        page.goto(job_page)
        page.locator("form[action$='/retry'] input[name=reason]").fill("the gateway is back")
        page.locator("#retry").click()
        expect(page.locator("#result")).to_contain_text("Revived 1 job(s)")

        def succeeded() -> bool:
            page.goto(job_page)
            return page.locator("#history .ev-succeeded").count() == 1

        wait_for(succeeded, what="the retried job to succeed, as its page shows")
        wait_for(
            lambda: scalar(db, "SELECT count(*) = 0 FROM outbox_jobs WHERE key = 'account:42'"),
            what="the key's waiting jobs to run",
        )
        wait_for(lambda: _sealed(db), timeout=SEALING, what="the relay to seal the history")

    page.get_by_role("link", name="Audit").click()
    expect(page.locator("#latest-seal")).to_be_visible()
    page.locator("form.filters input[name=key]").fill("account:42")
    page.get_by_role("button", name="Query").click()
    trail = page.locator("#trail tbody tr")
    expect(trail.filter(has_text="revived")).to_contain_text(ANONYMOUS)
    assert trail.filter(has_text="succeeded").count() == len(waiting) + 1
    page.locator("#verify").click()
    expect(page.locator("#verified")).to_contain_text("Chain verified")
    screenshot(page, screenshots, "audit.png")

    page.goto(job_page)

    events = page.locator("#history .state").all_inner_texts()
    assert events[0] == "enqueued"
    assert events[-1] == "succeeded"
    assert events.index("dead") < events.index("revived") < events.index("succeeded")
    revived = page.locator("#history li", has_text="revived")
    expect(revived).to_contain_text(f"by {ANONYMOUS}")
    expect(revived).to_contain_text("reason: the gateway is back")
    dead = page.locator("#history li", has_text="GatewayTimeout")
    dead.locator("summary").click()
    expect(dead.locator("pre")).to_contain_text("in charge")
    page.locator("#show-payload").click()  # an ended job's payload, as history keeps it
    assert json.loads(page.locator("#payload-json").inner_text()) == PAYMENT
    screenshot(page, screenshots, "job.png")


def _sealed(db: sa.Engine) -> bool:
    with db.connect() as conn:
        return seal.lag_seconds(conn) == 0


def test_a_read_only_console_shows_no_retry_or_cancel_buttons(
    db: sa.Engine, read_only_console: str, page: Page
) -> None:
    [job] = enqueue(db, outbox.NewJob("op.job", {"n": 1}))
    set_dead(db, job)
    page.goto(f"{read_only_console}/jobs/{job.uuid}")
    expect(page.locator("#state")).to_have_text("dead")
    expect(page.locator(".mode")).to_contain_text("read-only")
    expect(page.locator("#retry")).to_have_count(0)
    expect(page.locator("#cancel")).to_have_count(0)
    expect(page.locator("main form[method=post]")).to_have_count(0)
    page.locator("#show-payload").click()  # reading is still allowed
    expect(page.locator("#payload-json")).to_contain_text('"n": 1')

    page.goto(f"{read_only_console}/jobs?state=dead")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    expect(page.locator(".actions")).to_have_count(0)
    expect(page.locator("main form[method=post]")).to_have_count(0)


def test_the_go_to_job_box_jumps_to_the_job_and_explains_a_bad_uuid(
    db: sa.Engine, console: str, page: Page
) -> None:
    [job] = enqueue(db, outbox.NewJob("op.job", {"n": 1}, queue="default"))
    page.goto(f"{console}/jobs")
    page.get_by_label("Job uuid").fill(f"  {job.uuid} ")
    page.get_by_role("button", name="Go to job").click()
    page.wait_for_url(f"{console}/jobs/{job.uuid}")
    expect(page.locator("h1")).to_contain_text(str(job.uuid))
    expect(page.locator("#state")).to_have_text("pending")

    page.get_by_label("Job uuid").fill("0b6c1d5e-not-a-uuid")
    page.get_by_role("button", name="Go to job").click()
    expect(page.locator("h1")).to_have_text("Bad request")
    expect(page.locator("[role=alert]")).to_contain_text("is not a job uuid")


def test_a_filtered_retry_asks_for_confirmation_then_revives_only_the_dead_jobs(
    db: sa.Engine, console: str, page: Page
) -> None:
    *dead, pending = enqueue(db, *[outbox.NewJob("bulk.job", {"n": i}) for i in range(4)])
    enqueue(db, outbox.NewJob("other.job", {"n": 9}))
    set_dead(db, *dead)
    page.goto(f"{console}/jobs")
    page.locator("input[name=type]").fill("bulk.job")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"type=bulk\.job"))
    expect(page.locator("#jobs tbody tr")).to_have_count(4)

    page.get_by_role("button", name="Retry the dead ones…").click()
    expect(page.locator("h1")).to_have_text("Confirm: revived")
    expect(page.locator("main")).to_contain_text("4 live job(s) match this filter: 3 to be revived")
    expect(page.locator("main")).to_contain_text("1 left alone (1 pending")
    assert [r.state for r in jobs(db)] == ["dead", "dead", "dead", "pending", "pending"]

    page.locator("input[name=reason]").fill("fixed the upstream")
    page.locator("#confirm").click()
    expect(page.locator("#result")).to_contain_text("Revived 3 job(s) of 4 matched")
    assert [r.state for r in jobs(db)] == ["pending"] * 5
    revived = [h for h in history(db) if h.event == "revived"]
    assert sorted(h.job_uuid for h in revived) == sorted(h.uuid for h in dead)
    assert Counter((h.actor, h.reason) for h in revived) == {(ANONYMOUS, "fixed the upstream"): 3}
    assert pending.uuid not in {h.job_uuid for h in revived}
