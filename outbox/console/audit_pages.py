"""The auditors' page: the seal chain, a verification on demand, and trail queries with CSV."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import sqlalchemy as sa
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from outbox.audit import chain, seal, trail, verify
from outbox.console.pages import filter_text
from outbox.errors import InvalidJob
from outbox.moments import parse_moment
from outbox.sql import queries

if TYPE_CHECKING:
    from outbox.console.app import Console

SUMMARY = sa.text(queries["console_seal_summary"])
#: Trail rows shown on the page; the CSV download holds up to :data:`CSV_ROWS`.
SHOWN = 200
CSV_ROWS = 100_000
_FILTERS = ("job", "key", "type", "actor", "since", "until")


def routes(console: Console) -> list[Route]:
    verifying = threading.Lock()

    def audit(request: Request) -> Response:
        asked = trail_filter(request.query_params)
        with console.reading() as connection:
            last = chain.latest_seal(connection)
            summary = connection.execute(SUMMARY).mappings().one()
            lag = seal.lag_seconds(connection)
            rows = trail.trail(connection, **asked, limit=SHOWN + 1) if asked else None
        return console.render(
            request, "audit.html", title="Audit", last=last, summary=summary, lag=lag,
            rows=None if rows is None else rows[:SHOWN],
            more=rows is not None and len(rows) > SHOWN, asked=asked,
            query=str(request.query_params), shown=SHOWN, csv_rows=CSV_ROWS,
        )  # fmt: skip

    def verify_now(request: Request) -> Response:
        page = "_verified.html" if request.headers.get("hx-request") else "verified.html"
        if not verifying.acquire(blocking=False):
            return console.render(
                request, page, title="Verification", busy=True, ok=False, report=None, seconds=0
            )
        started = time.perf_counter()
        try:
            with console.reading() as connection:
                report = verify.verify(connection)
            ok, problem = True, None
        except verify.VerificationError as exc:
            report, ok, problem = None, False, str(exc)
        finally:
            verifying.release()
        return console.render(
            request, page, title="Verification", busy=False, ok=ok, report=report, problem=problem,
            seconds=time.perf_counter() - started,
        )  # fmt: skip

    def trail_csv(request: Request) -> Response:
        asked = trail_filter(request.query_params)
        if not asked:
            raise InvalidJob("give at least one filter (job, key, type, actor, since, until)")
        with console.reading() as connection:
            rows = trail.trail(connection, **asked, limit=CSV_ROWS)
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        return StreamingResponse(
            _csv(rows), media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="outbox-trail-{stamp}.csv"'},
        )  # fmt: skip

    return [
        Route("/audit", audit, name="audit"),
        Route("/audit/verify", verify_now, name="verify"),
        Route("/audit/trail.csv", trail_csv, name="trail_csv"),
    ]


def trail_filter(params: QueryParams) -> dict[str, Any]:
    """The trail filters given in the query, checked; empty when none is."""
    asked: dict[str, Any] = {}
    for name in _FILTERS:
        text = filter_text(params.get(name), name)
        if text is None:
            continue
        if name == "job":
            try:
                asked[name] = UUID(text)
            except ValueError:
                raise InvalidJob(f"job: {text[:60]!r} is not a job uuid") from None
        elif name in ("since", "until"):
            try:
                asked[name] = parse_moment(text)
            except ValueError as exc:
                raise InvalidJob(f"{name}: {exc}") from None
        else:
            asked[name] = text
    return asked


#: What a spreadsheet reads as a formula at the start of a cell.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A value for a CSV that auditors open in a spreadsheet: times in ISO 8601 at full
    precision, and text that a spreadsheet would run as a formula (a key written
    ``=HYPERLINK(...)`` by an application) quoted with a leading apostrophe, as OWASP advises.
    ``outbox audit trail --format csv`` keeps values exact, for tools."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def _csv(rows: list[dict[str, Any]]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(trail.COLUMNS))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
        if out.tell() > 64_000:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()
