"""The pages people read: the overview, jobs, one job, one key, the relays."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import sqlalchemy as sa
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from outbox import operator, status
from outbox.console import charts
from outbox.errors import InvalidJob
from outbox.moments import parse_moment
from outbox.sql import queries

if TYPE_CHECKING:
    from outbox.console.app import Console

COUNT = sa.text(queries["console_count_jobs"])
KEY_HISTORY = sa.text(queries["console_key_history"])
KEY_LIVE = sa.text(queries["console_key_live"])
ENQUEUED_PAYLOAD = sa.text(queries["console_enqueued_payload"])
LEADERS = sa.text(queries["console_leaders"])
#: Rows per page of a list.
PAGE = 50
#: History rows per page of a key.
KEY_PAGE = 100
#: Matching jobs counted exactly up to this many; past it, the planner's estimate is shown.
COUNT_CAP = 10_000
#: The chores one relay leads for all (outbox/locks.py), by their lock's second key.
CHORES = {2: "queue gauges (among relays serving /metrics)", 3: "sealing",
          4: "upkeep (vacuum, when autovacuum falls behind)"}  # fmt: skip
#: The longest filter value accepted (a key, a type, a queue).
LONGEST = 500
#: Why a filter value holding NUL is refused (the database would, with an error of its own).
NUL = "{name} holds a NUL character, which no stored {name} can"


def routes(console: Console) -> list[Route]:
    def overview(request: Request) -> Response:
        return console.render(request, "overview.html", title="Overview", **_overview(console))

    def overview_live(request: Request) -> Response:
        return console.render(request, "_overview.html", **_overview(console))

    def jobs(request: Request) -> Response:
        where = job_filter(request.query_params)
        after = _whole(request.query_params.get("after", "0"), "after")
        with console.reading() as connection:
            rows = operator.list_jobs(connection, where, after=after, limit=PAGE + 1)
            counted = _count(connection, where)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        return console.render(
            request, "jobs.html", title="Jobs", rows=rows, where=where, counted=counted,
            next_after=rows[-1]["id"] if more else None, after=after,
            query=_query(request.query_params), states=operator.LIVE_STATES,
        )  # fmt: skip

    def find(request: Request) -> Response:
        text = request.query_params.get("uuid", "").strip()
        try:
            uuid = UUID(text)
        except ValueError:
            raise InvalidJob(f"{text[:60]!r} is not a job uuid (like 0b6c1d5e-...)") from None
        return RedirectResponse(f"{console.config.base_path}/jobs/{uuid}", status_code=303)

    def job(request: Request) -> Response:
        uuid: UUID = request.path_params["uuid"]
        with console.reading() as connection:
            live, trail = operator.show(connection, uuid)
        if live is None and not trail:
            raise HTTPException(
                404, f"No job {uuid} here: it was never enqueued in this database, or its "
                "history has been pruned.",
            )  # fmt: skip
        first = trail[0] if trail else live or {}
        state = live["state"] if live else trail[-1]["event"]
        if live and state == "pending" and live["run_at"] > datetime.now(UTC):
            state = "scheduled"
        return console.render(
            request, "job.html", title=f"Job {uuid}", uuid=uuid, live=live, trail=trail,
            about=first, state=state, revivable=state in operator.REVIVABLE,
            cancellable=live is not None and state in operator.CANCELLABLE,
        )  # fmt: skip

    def payload(request: Request) -> Response:
        uuid: UUID = request.path_params["uuid"]
        with console.reading() as connection:
            live = connection.execute(operator.JOB, {"uuid": uuid}).mappings().first()
            kept = connection.execute(ENQUEUED_PAYLOAD, {"uuid": uuid}).mappings().first()
        if live is not None:
            shown, digest = live["payload"], None
        elif kept is not None:
            shown = kept["payload"]
            digest = None if kept["payload_sha256"] is None else kept["payload_sha256"].hex()
        else:
            raise HTTPException(404, f"No payload of job {uuid} is kept here.")
        text = None if shown is None else json.dumps(shown, indent=2, ensure_ascii=False)
        page = "_payload.html" if request.headers.get("hx-request") else "payload.html"
        return console.render(
            request, page, title=f"Payload of {uuid}", uuid=uuid, payload=text, digest=digest
        )

    def key(request: Request) -> Response:
        name: str = request.path_params.get("key") or request.query_params.get("key", "")
        if not name:
            raise InvalidJob("name a key: /keys/<key>, or /keys?key=<key>")
        if len(name) > LONGEST:
            raise InvalidJob(f"key is longer than {LONGEST} characters")
        if "\x00" in name:
            raise InvalidJob(NUL.format(name="key"))
        after = _whole(request.query_params.get("after", "0"), "after")
        with console.reading() as connection:
            live = list(connection.execute(KEY_LIVE, {"key": name, "limit": PAGE + 1}).mappings())
            rows = list(
                connection.execute(
                    KEY_HISTORY, {"key": name, "after": after, "limit": KEY_PAGE + 1}
                ).mappings()
            )
        more = len(rows) > KEY_PAGE
        rows = rows[:KEY_PAGE]
        return console.render(
            request, "key.html", title=f"Key {name}", key=name, live=live[:PAGE],
            more_live=len(live) > PAGE, rows=rows, next_after=rows[-1]["id"] if more else None,
            after=after, page=PAGE,
        )  # fmt: skip

    def relays(request: Request) -> Response:
        with console.reading() as connection:
            relays = status.live_relays(connection)
            schedules = status.schedules(connection)
            leaders = {
                CHORES[row.lock]: _relay_name(row.application_name)
                for row in connection.execute(LEADERS)
            }
        return console.render(
            request, "relays.html", title="Relays", relays=relays, schedules=schedules,
            leaders=leaders,
            chores=list(CHORES.values()),
        )  # fmt: skip

    return [
        Route("/", overview, name="overview"),
        Route("/overview", overview_live, name="overview_live"),
        Route("/jobs", jobs, name="jobs"),
        Route("/jobs/find", find, name="find"),
        Route("/jobs/{uuid:uuid}", job, name="job"),
        Route("/jobs/{uuid:uuid}/payload", payload, name="payload"),
        Route("/keys/{key:path}", key, name="key"),
        # the keys "." and "..", which browsers resolve as path segments
        Route("/keys", key, name="key_by_query"),
        Route("/relays", relays, name="relays"),
    ]


def _overview(console: Console) -> dict[str, Any]:
    with console.reading() as connection:
        snapshot = status.snapshot(connection, blocked_limit=20)
        minutes = console.activity.last_hour(connection, datetime.now(UTC))
    totals = {
        name: sum(getattr(m, name) for m in minutes) for name in ("succeeded", "retried", "dead")
    }
    return {
        "status": snapshot,
        "totals": totals,
        "done_chart": charts.bars(
            minutes, ["succeeded"], label="jobs succeeded per minute", colours=["#2f7d4f"]
        ),
        "failed_chart": charts.bars(
            minutes,
            ["retried", "dead"],
            label="attempts failed per minute",
            colours=["#c98a00", "#b3261e"],
        ),
        "refresh": int(console.config.refresh.total_seconds()),
    }


def job_filter(params: QueryParams) -> operator.Filter:
    """The filter of a jobs page's query (``state``, ``queue``, ``type``, ``key``, ``since``);
    a value that cannot be one is refused with what would be accepted."""
    states = tuple(
        operator.check_state(value.strip().lower()) for value in params.getlist("state") if value
    )
    since_text = params.get("since", "").strip()
    try:
        since = parse_moment(since_text) if since_text else None
    except ValueError as exc:
        raise InvalidJob(f"since: {exc}") from None
    return operator.Filter(
        states=states, queue=filter_text(params.get("queue"), "queue"),
        type=filter_text(params.get("type"), "type"), key=filter_text(params.get("key"), "key"),
        since=since,
    )  # fmt: skip


def _count(connection: sa.Connection, where: operator.Filter) -> dict[str, Any]:
    params = {
        "states": list(where.states) or None, "queue": where.queue, "type": where.type,
        "key": where.key, "since": where.since, "cap": COUNT_CAP + 1,
    }  # fmt: skip
    exact = int(connection.execute(COUNT, params).scalar_one())
    if exact <= COUNT_CAP:
        return {"exact": True, "jobs": exact}
    plan = connection.execute(sa.text(f"EXPLAIN (FORMAT JSON) {queries['list_jobs']}"), {
        **params, "after": 0, "limit": None,
    }).scalar_one()  # fmt: skip
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    return {"exact": False, "jobs": max(estimate, COUNT_CAP + 1)}


def filter_text(value: str | None, name: str) -> str | None:
    """A filter's text, stripped; None when empty; refused when too long or holding a NUL."""
    if value is None or not value.strip():
        return None
    if len(value) > LONGEST:
        raise InvalidJob(f"{name} is longer than {LONGEST} characters")
    if "\x00" in value:
        raise InvalidJob(NUL.format(name=name))
    return value.strip()


def _whole(text: str, name: str) -> int:
    if not text.isdigit():
        raise InvalidJob(f"{name} must be a job id (a whole number), not {text[:30]!r}")
    return int(text)


def _query(params: QueryParams) -> str:
    """The page's filters as a query string without ``after``, for the next page's link."""
    kept = [(k, v) for k, v in params.multi_items() if k != "after" and v]
    return str(QueryParams(kept))


def _relay_name(application_name: str | None) -> str:
    name = application_name or "(unknown)"
    return name.removeprefix("outbox relay ")
