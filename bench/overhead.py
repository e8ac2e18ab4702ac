"""What enqueue adds to an application's own transaction: the cost that matters for an outbox.

    python -m bench.overhead [--transactions 4000] [--clients 4] [--rounds 5]

Each of ``--clients`` threads runs transactions that insert one domain row (a ledger entry)
and commit, with and without ``outbox.enqueue`` of one job in the same transaction (no key,
no idempotency key: the plain case). Enqueue runs twice: as it is while every relay is busy
(or none runs), and while a relay is idle, when each enqueueing transaction also sends
``NOTIFY`` (a session holds the idle relay's mark, relay/idle.py). The kinds run in
alternating rounds on the same database, and the report is the median time per transaction
of each and the share enqueue adds. DESIGN.md section 6 asks for at most 10%.

Uses ``OUTBOX_DSN``, else PostgreSQL on 127.0.0.1:5432, else the embedded server, and a
database of its own that it drops at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shlex
import statistics
import sys
from collections.abc import Iterator

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

import outbox
from bench.enqueue import timed_clients
from outbox import locks
from outbox.database import create_engine, libpq_dsn
from outbox.testing import server_dsn, temporary_database

#: The application's own table: a ledger entry per transaction (bench.overhead_sql too).
ENTRIES = sa.text(
    "CREATE TABLE bench_entries (id bigserial PRIMARY KEY, account text NOT NULL, "
    "amount bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())"
)
DOMAIN = sa.text("INSERT INTO bench_entries (account, amount) VALUES (:account, :amount)")
PLAIN = "domain row + commit"
BUSY = "domain row + enqueue + commit, relays busy"
IDLE = "domain row + enqueue + commit, a relay idle"
KINDS = (PLAIN, BUSY, IDLE)


@contextlib.contextmanager
def relay_idle(dsn: str) -> Iterator[None]:
    """A session holds the idle relay's mark for the block, as an idle relay does."""
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as marked:
        marked.execute(f"SELECT pg_advisory_lock_shared{locks.IDLE}")
        yield


def run(engine: sa.Engine, transactions: int, clients: int, enqueue: bool) -> float:
    """Seconds per transaction, over ``transactions`` split among ``clients`` threads."""
    per_client = transactions // clients

    def client(c: int) -> None:
        with Session(engine) as session:
            for i in range(per_client):
                session.execute(DOMAIN, {"account": f"acc-{c}-{i % 100}", "amount": i})
                if enqueue:
                    outbox.enqueue(session, "ledger.posted", {"entry": i, "client": c})
                session.commit()

    elapsed = timed_clients([functools.partial(client, c) for c in range(clients)])
    return elapsed / (per_client * clients)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--transactions", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print("$ python -m bench.overhead " + shlex.join(sys.argv[1:] if argv is None else argv))
    with temporary_database(server_dsn()) as dsn:
        engine = create_engine(dsn, pool_size=args.clients + 2)
        with engine.begin() as conn:
            conn.execute(ENTRIES)
        run(engine, args.clients * 50, args.clients, enqueue=True)  # connections, plans warm
        found: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(args.rounds):
            for kind in KINDS:
                with relay_idle(dsn) if kind == IDLE else contextlib.nullcontext():
                    found[kind].append(
                        run(engine, args.transactions, args.clients, enqueue=kind != PLAIN)
                    )
        engine.dispose()
    print(
        f"{args.clients} clients, {args.transactions} transactions a round, {args.rounds} rounds "
        f"alternating; medians per transaction (min-max):"
    )
    base = statistics.median(found[PLAIN])
    for kind, values in found.items():
        median = statistics.median(values)
        added = "" if kind == PLAIN else f", enqueue adds {100 * (median / base - 1):.1f}%"
        print(
            f"  {kind + ':':46s} {median * 1000:.3f} ms ({min(values) * 1000:.3f}-"
            f"{max(values) * 1000:.3f}), {1 / median:,.0f} tx/s{added}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
