"""The web console's pages at scale: server time of each page over a full history.

    python -m bench.console [--live 100000] [--history 1000000] [--last-hour 300000]
                            [--requests 50] [--warmups 3] [--seal all|none] [--unsummarized 0]
                            [--hold SECONDS]

Fills a database of its own with SQL (not timed as a figure, but reported): ``--live`` live
jobs over 5 queues and 20 types (mostly pending, 10% scheduled, 3% running with a relay and
a lease, 1% dead with an error; 30% keyed, about 5,000 keys, a few of them busy) and history
topped up to ``--history`` rows (the live jobs' rows, and succeeded, retried and dead-then-
cancelled jobs that have ended), ``at`` over the last 24 hours, ``--last-hour`` rows of them
in the last hour, written in time order by many transactions as relays would. Then it seals
all history (timed; ``--seal none`` leaves it unsealed) and runs VACUUM (ANALYZE) on the
outbox tables, as autovacuum would have by then. The BRIN index on ``at`` summarizes each
block range as it fills (``autosummarize``, revision outbox_0012); before that revision the
newest rows were in no summary between two autovacuums of history (every 20% of its rows
appended, by default), and every query by ``at`` read them all. ``--unsummarized ROWS`` makes
the index forget the newest ROWS rows, to measure that worst case (200,000: just before
autovacuum would come round at this size).

Then it times each page through the ASGI app in-process (Starlette's TestClient), reading
the console's own ``Server-Timing: app;dur=`` header: ``--warmups`` requests first, then
``--requests`` timed ones, page by page. The overview's first request is reported apart: the
console counts the last hour once, then keeps what can no longer change in memory. While the
pages are timed, a thread appends history at the last hour's rate (``--no-writes``: none), as
relays would. Then each query of the overview is timed alone, as many times (its parts: why it
takes what it takes). One full chain verification (``/audit/verify``) is timed once at the end.
``--hold`` keeps the database that many seconds after the figures (its name is printed), for
EXPLAIN by hand.

Uses OUTBOX_DSN, else 127.0.0.1:5432, else the embedded server, in a database of its own that
it drops at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from starlette.testclient import TestClient

from bench.table import render_text
from outbox import status
from outbox.audit import seal
from outbox.console import ConsoleConfig, create_app
from outbox.console.activity import Activity
from outbox.database import create_engine
from outbox.testing import server_dsn, temporary_database

QUEUES = ("default", "email", "billing", "reports", "webhooks")
#: 4 types per queue: ``email.task0`` .. ``email.task3``.
TYPES = tuple(f"{queue}.task{i}" for queue in QUEUES for i in range(4))
RELAYS = ("bench-a", "bench-b")
KEYS = 5_000
KEYED = 0.3
#: The key that the most jobs carry (keys are drawn as floor(KEYS * random()^2)).
BUSY_KEY = "acct:0"
#: Jobs per fill transaction (about 3.3 history rows each).
JOBS_PER_TRANSACTION = 3_000
#: Server time targets from the issue, in ms: the overview's, every other page's.
OVERVIEW_TARGET, PAGE_TARGET = 100.0, 200.0
TIMING = re.compile(r"app;dur=([0-9.]+)")

#: The history rows of each kind of job: (event, seconds after its enqueue, attempt).
#: Live: pending and scheduled (enqueued), running (claimed too), dead (failed, dead).
#: Ended: ok (succeeded), retry_ok (failed, retried, then succeeded), dead_cancelled.
EVENTS: dict[str, tuple[tuple[str, float, int], ...]] = {
    "pending": (("enqueued", 0, 0),),
    "scheduled": (("enqueued", 0, 0),),
    "running": (("enqueued", 0, 0), ("claimed", 0.5, 1)),
    "dead": (("enqueued", 0, 0), ("claimed", 0.5, 1), ("failed", 0.7, 1), ("dead", 0.7, 1)),
    "ok": (("enqueued", 0, 0), ("claimed", 0.1, 1), ("succeeded", 0.15, 1)),
    "retry_ok": (
        ("enqueued", 0, 0),
        ("claimed", 0.2, 1),
        ("failed", 0.3, 1),
        ("retried", 0.3, 1),
        ("claimed", 10.1, 2),
        ("succeeded", 10.2, 2),
    ),
    "dead_cancelled": (
        ("enqueued", 0, 0),
        ("claimed", 0.2, 1),
        ("failed", 0.3, 1),
        ("dead", 0.3, 1),
        ("cancelled", 30, 1),
    ),
}


def live_kind(n: int) -> str:
    """Of every 100 live jobs: 1 dead, 3 running, 10 scheduled, 86 pending."""
    m = n % 100
    return "dead" if m == 0 else "running" if m <= 3 else "scheduled" if m <= 13 else "pending"


def ended_kind(n: int) -> str:
    """Of every 100 ended jobs: 10 succeeded after a retry, 1 died and was cancelled."""
    return "retry_ok" if n % 10 == 0 else "dead_cancelled" if n % 100 == 1 else "ok"


def rows_of(count: int, kind: Sequence[str]) -> int:
    """History rows of ``count`` jobs whose kinds repeat every ``len(kind)``."""
    cycle = sum(len(EVENTS[k]) for k in kind)
    whole, rest = divmod(count, len(kind))
    return whole * cycle + sum(len(EVENTS[k]) for k in kind[:rest])


def ended_jobs_for(rows: int) -> int:
    """How many ended jobs give at most ``rows`` history rows (and the most such)."""
    cycle = [ended_kind(n) for n in range(100)]
    per_cycle = rows_of(100, cycle)
    count = rows // per_cycle * 100
    while rows_of(count + 1, cycle) <= rows:
        count += 1
    return count


# --- the fill ---------------------------------------------------------------------------

PLAN = """
    CREATE UNLOGGED TABLE bench_jobs AS
    SELECT row_number() OVER (ORDER BY t, uuid) AS ord, *
    FROM (
        SELECT md5('live-' || n)::uuid AS uuid, true AS live, n,
               CASE WHEN n % 100 = 0 THEN 'dead' WHEN n % 100 <= 3 THEN 'running'
                    WHEN n % 100 <= 13 THEN 'scheduled' ELSE 'pending' END AS kind,
               CAST(:end AS timestamptz) - interval '1 hour'
                   + (n / CAST(:live AS float8)) * interval '59 minutes' AS t
        FROM generate_series(0, :live - 1) AS n
        UNION ALL
        SELECT md5('ended-' || n)::uuid, false, n,
               CASE WHEN n % 10 = 0 THEN 'retry_ok' WHEN n % 100 = 1 THEN 'dead_cancelled'
                    ELSE 'ok' END,
               -- the first (1 - :busy) of them over 23 hours, the rest in the last hour
               CASE WHEN n < :ended * (1 - :busy)
                    THEN CAST(:end AS timestamptz) - interval '24 hours'
                         + (n / (:ended * (1 - :busy))) * interval '23 hours'
                    ELSE CAST(:end AS timestamptz) - interval '1 hour'
                         + ((n - :ended * (1 - :busy)) / (:ended * :busy))
                           * interval '59 minutes 20 seconds' END
        FROM generate_series(0, :ended - 1) AS n
    ) AS jobs
"""

#: Type, queue and key of each job, drawn after the plan (setseed makes the draw repeatable).
TRAITS = (
    "ALTER TABLE bench_jobs ADD COLUMN type text, ADD COLUMN queue text, ADD COLUMN key text",
    """
    UPDATE bench_jobs SET
        type = (CAST(:types AS text[]))[1 + (n % 20)],
        queue = (CAST(:queues AS text[]))[1 + (n % 20) / 4],
        key = CASE WHEN random() < :keyed THEN 'acct:' || floor(:keys * random() ^ 2)::int END
    """,
    "CREATE INDEX ON bench_jobs (ord)",
)

EVENTS_TABLE = """
    CREATE UNLOGGED TABLE bench_events (kind text, event text, after float8, attempt int)
"""

HISTORY = """
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, payload, run_at,
                                relay, error, duration_ms, reason, at)
    SELECT j.uuid, e.event, j.type, j.queue, j.key, e.attempt,
           CASE WHEN e.event = 'enqueued'
                THEN jsonb_build_object('account', j.key, 'amount', j.n % 10000,
                                        'currency', 'EUR', 'reference', 'bench-' || j.n) END,
           CASE WHEN e.event = 'enqueued' AND j.kind = 'scheduled'
                THEN CAST(:end AS timestamptz) + (1 + j.n % 3600) * interval '1 second'
                WHEN e.event = 'enqueued' THEN j.t
                WHEN e.event = 'retried' THEN j.t + interval '10 seconds' END,
           CASE WHEN e.event NOT IN ('enqueued', 'cancelled')
                THEN (CAST(:relays AS text[]))[1 + j.n % 2] END,
           CASE WHEN e.event = 'failed' THEN jsonb_build_object(
                'type', 'builtins.RuntimeError',
                'message', 'upstream answered 503 for ' || coalesce(j.key, 'job ' || j.n),
                'traceback', 'Traceback (most recent call last):\n  ...\nRuntimeError') END,
           CASE WHEN e.event IN ('succeeded', 'failed') THEN 5 + j.n % 400 END,
           CASE WHEN e.event = 'cancelled' THEN 'bench: given up' END,
           j.t + e.after * interval '1 second'
    FROM bench_jobs AS j
    JOIN bench_events AS e ON e.kind = j.kind
    WHERE j.ord > :first AND j.ord <= :last
    ORDER BY j.t + e.after * interval '1 second', j.ord
"""

LIVE = """
    INSERT INTO outbox_jobs (uuid, type, queue, key, payload, state, attempt, max_attempts,
                             run_at, enqueued_at, claimed_at, lease_expires_at, relay,
                             last_error)
    SELECT uuid, type, queue, key,
           jsonb_build_object('account', key, 'amount', n % 10000, 'currency', 'EUR',
                              'reference', 'bench-' || n),
           CASE kind WHEN 'running' THEN 'running' WHEN 'dead' THEN 'dead' ELSE 'pending' END,
           CASE WHEN kind IN ('running', 'dead') THEN 1 ELSE 0 END,
           CASE WHEN kind = 'dead' THEN 1 END,
           CASE WHEN kind = 'scheduled'
                THEN CAST(:end AS timestamptz) + (1 + n % 3600) * interval '1 second'
                ELSE t END,
           t,
           CASE WHEN kind IN ('running', 'dead') THEN t + interval '0.5 seconds' END,
           CASE WHEN kind = 'running' THEN now() + interval '1 day' END,
           CASE WHEN kind IN ('running', 'dead') THEN (CAST(:relays AS text[]))[1 + n % 2] END,
           CASE WHEN kind = 'dead' THEN 'upstream answered 503 for ' || coalesce(key, 'job ' || n)
           END
    FROM bench_jobs
    WHERE live
    ORDER BY bench_jobs.t, bench_jobs.ord
"""

RELAY_ROWS = """
    INSERT INTO outbox_relays (relay, host, pid, queues, concurrency, version, expires_at, types)
    SELECT r, 'bench-host', 4242 + i, CAST(:queues AS text[]), 16, 'bench',
           now() + interval '1 day', CAST(:types AS text[])
    FROM unnest(CAST(:relays AS text[])) WITH ORDINALITY AS relays (r, i)
"""


@dataclasses.dataclass
class Filled:
    live: int
    history: int
    last_hour: int
    seconds: float
    transactions: int


def fill(engine: sa.Engine, args: argparse.Namespace, end: datetime) -> Filled:
    started = time.perf_counter()
    live_rows = rows_of(args.live, [live_kind(n) for n in range(100)])
    if live_rows > args.history:
        raise SystemExit(f"--history {args.history:,} is below the live jobs' own rows")
    ended = ended_jobs_for(args.history - live_rows)
    ended_rows = args.history - live_rows
    # the share of ended jobs in the last hour that makes --last-hour rows in all
    busy = min(max((args.last_hour - live_rows) / max(ended_rows, 1), 0.0), 1.0)
    common = {"end": end, "relays": list(RELAYS), "queues": list(QUEUES), "types": list(TYPES)}
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT setseed(0.42)"))
        conn.execute(sa.text(PLAN), {**common, "live": args.live, "ended": ended, "busy": busy})
        for statement in TRAITS:
            conn.execute(sa.text(statement), {**common, "keyed": KEYED, "keys": KEYS})
        conn.execute(sa.text(EVENTS_TABLE))
        conn.execute(
            sa.text("INSERT INTO bench_events VALUES (:kind, :event, :after, :attempt)"),
            [
                {"kind": kind, "event": e, "after": after, "attempt": attempt}
                for kind, events in EVENTS.items()
                for e, after, attempt in events
            ],
        )
        conn.execute(sa.text(RELAY_ROWS), common)
        total = int(conn.execute(sa.text("SELECT count(*) FROM bench_jobs")).scalar_one())
    transactions = 0
    with engine.connect() as conn:  # history in time order, by many transactions
        for first in range(0, total, JOBS_PER_TRANSACTION):
            conn.execute(sa.text(HISTORY), {**common, "first": first,
                                            "last": first + JOBS_PER_TRANSACTION})  # fmt: skip
            conn.commit()
            transactions += 1
    with engine.begin() as conn:  # its `enqueued` rows are written above, at enqueue time
        conn.execute(sa.text("ALTER TABLE outbox_jobs DISABLE TRIGGER outbox_jobs_enqueued"))
        conn.execute(sa.text(LIVE), common)
        conn.execute(sa.text("ALTER TABLE outbox_jobs ENABLE TRIGGER outbox_jobs_enqueued"))
        conn.execute(sa.text("DROP TABLE bench_jobs, bench_events"))
    with engine.connect() as conn:
        history = int(conn.execute(sa.text("SELECT count(*) FROM outbox_history")).scalar_one())
        last_hour = int(
            conn.execute(
                sa.text("SELECT count(*) FROM outbox_history WHERE at >= :t"),
                {"t": end - timedelta(hours=1)},
            ).scalar_one()
        )
    return Filled(args.live, history, last_hour, time.perf_counter() - started, transactions)


WRITE = """
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay, duration_ms)
    SELECT md5('written-' || n)::uuid,
           (ARRAY['enqueued', 'claimed', 'succeeded'])[1 + n % 3],
           (CAST(:types AS text[]))[1 + n % 20], (CAST(:queues AS text[]))[1 + (n % 20) / 4],
           CASE WHEN n % 10 < 3 THEN 'acct:' || n % 5000 END, CASE WHEN n % 3 > 0 THEN 1 ELSE 0 END,
           CASE WHEN n % 3 > 0 THEN 'bench-a' END, CASE WHEN n % 3 = 2 THEN 12.5 END
    FROM generate_series(CAST(:first AS bigint), CAST(:first AS bigint) + :rows - 1) AS n
"""


class Writer(threading.Thread):
    """Appends history at ``rate`` rows a second, a transaction every 0.1 s, as relays would
    while the pages are timed (the overview's counts and the seal lag see them)."""

    def __init__(self, engine: sa.Engine, rate: float) -> None:
        super().__init__(daemon=True)
        self.engine, self.rate, self.written = engine, rate, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        params = {"queues": list(QUEUES), "types": list(TYPES)}
        with self.engine.connect() as conn:
            while not self.stopping.wait(0.1):
                due = int((time.monotonic() - started) * self.rate) - self.written
                if due > 0:
                    conn.execute(sa.text(WRITE), {**params, "first": self.written, "rows": due})
                    conn.commit()
                    self.written += due

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


#: The BRIN index's ranges that hold the newest :rows rows of history, forgotten: as they are
#: between two autovacuums of an append-only table (the index is not autosummarized).
DESUMMARIZE = """
    SELECT count(*) FROM (
        SELECT brin_desummarize_range('outbox_history_at_idx', block)
        FROM generate_series(
            (SELECT (ctid::text::point)[0]::bigint / 128 * 128 FROM outbox_history
             ORDER BY id DESC OFFSET :rows - 1 LIMIT 1),
            pg_relation_size('outbox_history') / current_setting('block_size')::bigint - 1, 128
        ) AS block
    ) AS forgotten
"""


def prepare(engine: sa.Engine, unsummarized: int) -> float:
    """VACUUM (ANALYZE) the outbox tables, as autovacuum would have; then make the BRIN
    index forget the ranges of the newest ``unsummarized`` history rows."""
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("outbox_jobs", "outbox_history", "outbox_seals", "outbox_relays"):
            conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))
        if unsummarized:
            conn.execute(sa.text(DESUMMARIZE), {"rows": unsummarized})
    return time.perf_counter() - started


# --- the pages ----------------------------------------------------------------------------


@dataclasses.dataclass
class Page:
    name: str
    path: str
    target: float
    times: list[float] = dataclasses.field(default_factory=list)

    def row(self) -> list[str]:
        times = sorted(self.times)
        p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
        verdict = "" if not self.target else "ok" if p95 < self.target else "MISSED"
        return [self.name, f"{statistics.median(times):.1f}", f"{p95:.1f}", f"{times[-1]:.1f}",
                f"{self.target:.0f}" if self.target else "", verdict]  # fmt: skip


def server_time(client: TestClient, path: str) -> float:
    response = client.get(path)
    if response.status_code != 200:
        raise SystemExit(f"GET {path}: {response.status_code}\n{response.text[:2000]}")
    found = TIMING.search(response.headers.get("server-timing", ""))
    if found is None:
        raise SystemExit(f"GET {path}: no Server-Timing header")
    return float(found[1])


def pages(engine: sa.Engine) -> list[Page]:
    """The pages timed, with the jobs, keys and uuids they name, read from the database."""
    with engine.connect() as conn:
        one = conn.execute(sa.text(
            "SELECT queue, type FROM outbox_jobs GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1"
        )).one()  # fmt: skip
        page_two = conn.execute(
            sa.text("SELECT id FROM outbox_jobs ORDER BY id OFFSET 49 LIMIT 1")
        ).scalar_one()
        live = conn.execute(sa.text(
            "SELECT uuid FROM outbox_jobs WHERE state = 'dead' ORDER BY id LIMIT 1"
        )).scalar_one()  # fmt: skip
        ended = conn.execute(sa.text(
            "SELECT job_uuid FROM outbox_history WHERE event = 'retried' ORDER BY id DESC LIMIT 1"
        )).scalar_one()  # fmt: skip
    by_type = f"/jobs?queue={one.queue}&type={one.type}"
    return [
        Page("/ (overview page)", "/", OVERVIEW_TARGET),
        Page("/overview (live fragment)", "/overview", OVERVIEW_TARGET),
        Page("/jobs", "/jobs", PAGE_TARGET),
        Page("/jobs?state=dead", "/jobs?state=dead", PAGE_TARGET),
        Page(by_type, by_type, PAGE_TARGET),
        Page(f"/jobs?key={BUSY_KEY}", f"/jobs?key={BUSY_KEY}", PAGE_TARGET),
        Page("/jobs?after=<page 2>", f"/jobs?after={page_two}", PAGE_TARGET),
        Page("/jobs/<live dead job>", f"/jobs/{live}", PAGE_TARGET),
        Page("/jobs/<ended job>", f"/jobs/{ended}", PAGE_TARGET),
        Page("/jobs/<live>/payload", f"/jobs/{live}/payload", PAGE_TARGET),
        Page("/jobs/<ended>/payload", f"/jobs/{ended}/payload", PAGE_TARGET),
        Page(f"/keys/{BUSY_KEY}", f"/keys/{BUSY_KEY}", PAGE_TARGET),
        Page("/relays", "/relays", PAGE_TARGET),
        Page("/audit", "/audit", PAGE_TARGET),
        Page(f"/audit?key={BUSY_KEY}", f"/audit?key={BUSY_KEY}", PAGE_TARGET),
        Page("/audit?since=1h", "/audit?since=1h", PAGE_TARGET),
    ]


def time_pages(engine: sa.Engine, args: argparse.Namespace) -> tuple[list[Page], list[str]]:
    measured = pages(engine)
    notes = []
    app = create_app(engine, ConsoleConfig())
    writer = Writer(engine, args.last_hour / 3600)
    if args.writes:
        writer.start()
    with TestClient(app) as client:
        first = server_time(client, "/relays")  # the pool's first connection, the base template
        cold = server_time(client, "/overview")
        second = server_time(client, "/overview")
        notes.append(
            f"overview, first request (the last hour counted from history): {cold:.1f} ms; "
            f"the next one: {second:.1f} ms (the app's very first request, /relays: "
            f"{first:.1f} ms)"
        )
        for page in measured:
            for _ in range(args.warmups):
                server_time(client, page.path)
            page.times = [server_time(client, page.path) for _ in range(args.requests)]
            print(f"  {page.name}: p50 {statistics.median(page.times):.1f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
        if args.verify:
            started = time.perf_counter()
            response = client.get("/audit/verify")
            took = time.perf_counter() - started
            found = TIMING.search(response.headers.get("server-timing", ""))
            verdict = "verified" if "verified" in response.text.lower() else "see the page"
            notes.append(
                f"/audit/verify, one full chain verification: {found[1] if found else '?'} ms "
                f"server time ({took:.1f}s wall), status {response.status_code}, {verdict}"
            )
    parts = overview_parts(engine, args)
    if args.writes:
        writer.stop()
        notes.append(
            f"history appended meanwhile: {writer.written:,} rows at "
            f"{args.last_hour / 3600:.0f} rows/s (the last hour's rate), a transaction per 0.1 s"
        )
    return measured + parts, notes


#: The overview's queries (outbox/status.py's snapshot, then the activity), timed one by one.
PARTS = ("DEPTH", "BLOCKED", "RELAYS", "THROUGHPUT", "UNRUNNABLE", "SCHEDULES")


def overview_parts(engine: sa.Engine, args: argparse.Namespace) -> list[Page]:
    """What the overview's server time is made of: each of its queries alone."""
    parts = [Page(f"  overview part: status {name.lower()}", name, 0) for name in PARTS]
    activity = Page("  overview part: activity (kept)", "activity", 0)
    counted = Activity()
    with engine.connect() as conn:
        counted.last_hour(conn, datetime.now(UTC))  # its first count, timed as the cold overview
        for _ in range(args.warmups + args.requests):
            for part in parts:
                started = time.perf_counter()
                conn.execute(getattr(status, part.path), {"limit": 20}).all()
                part.times.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            counted.last_hour(conn, datetime.now(UTC))
            activity.times.append((time.perf_counter() - started) * 1000)
            conn.rollback()
    for part in [*parts, activity]:
        part.times = part.times[args.warmups :]
    return [*parts, activity]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--live", type=int, default=100_000, help="live jobs")
    parser.add_argument("--history", type=int, default=1_000_000, help="history rows in all")
    parser.add_argument("--last-hour", type=int, default=300_000, help="of them in the last hour")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    parser.add_argument("--warmups", type=int, default=3, help="untimed requests first")
    parser.add_argument("--seal", choices=["all", "none"], default="all")
    parser.add_argument(
        "--unsummarized",
        type=int,
        default=0,
        metavar="ROWS",
        help="leave the newest ROWS history rows out of the BRIN index's summary (default 0)",
    )
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=True,
        help="time one /audit/verify at the end (default on)",
    )  # fmt: skip
    parser.add_argument(
        "--writes", action=argparse.BooleanOptionalAction, default=True,
        help="append history at the last hour's rate while timing (default on)",
    )  # fmt: skip
    parser.add_argument("--hold", type=float, default=0, help="keep the database this long")
    args = parser.parse_args(argv)
    command = "python -m bench.console " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"$ {command}", flush=True)
    signal.signal(signal.SIGTERM, _stop)  # a stopped run still drops its database
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn)
        with engine.connect() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        print(f"PostgreSQL {version}; shared 2-core machine: the figures are indicative")
        end = datetime.now(UTC)
        filled = fill(engine, args, end)
        print(
            f"fill: {filled.live:,} live jobs, {filled.history:,} history rows "
            f"({filled.last_hour:,} in the last hour) by {filled.transactions} transactions "
            f"in {filled.seconds:.1f}s",
            flush=True,
        )
        if args.seal == "all":
            started = time.perf_counter()
            with engine.connect() as conn:
                seals = seal.seal_all(conn)
            took = time.perf_counter() - started
            print(f"seal_all: {len(seals)} seals over {filled.history:,} rows in {took:.1f}s",
                  flush=True)  # fmt: skip
        else:
            print("history left unsealed (--seal none)")
        took = prepare(engine, args.unsummarized)
        print(f"VACUUM (ANALYZE): {took:.1f}s; the newest {args.unsummarized:,} history rows "
              "not summarized in the BRIN index on `at`", flush=True)  # fmt: skip
        measured, notes = time_pages(engine, args)
        body = [["page", "p50 ms", "p95 ms", "max ms", "target", ""]]
        body += [page.row() for page in measured]
        print(f"\nServer time (Server-Timing app;dur), {args.warmups} warm-ups then "
              f"{args.requests} requests per page:")  # fmt: skip
        print("\n".join(render_text(body)))
        print()
        print("\n".join(notes))
        if args.hold:
            print(f"holding database {engine.url.database} for {args.hold:.0f}s", flush=True)
            time.sleep(args.hold)
        engine.dispose()
    return 0


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main())
