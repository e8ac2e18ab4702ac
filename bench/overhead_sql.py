"""Where enqueue's cost in the application's transaction goes, measured on the server alone.

    python -m bench.overhead_sql [--clients 4] [--seconds 8] [--rounds 2]

``python -m bench.overhead`` times the whole transaction from Python clients. This runs the
same transactions with pgbench (no Python at all, prepared statements), so that only the
server's share is left, and takes enqueue apart:

- ``domain``: insert one domain row, commit (the application's own transaction);
- ``domain x2``: insert two domain rows (what any second insert costs);
- ``+ NOTIFY``: the domain row and ``pg_notify('outbox_jobs', ...)``, nothing else;
- ``+ job, no NOTIFY``: the domain row and the job row as ``enqueue_one`` inserts it
  (``outbox/sql/enqueue.sql``: its indexes and the trigger's ``enqueued`` history row),
  without the look for an idle relay;
- ``+ enqueue``: the domain row and ``enqueue_one`` whole, as ``outbox.enqueue`` sends it,
  with no relay idle (relays busy, or none): it looks for an idle relay and sends no NOTIFY;
- ``+ enqueue, a relay idle``: the same while a session holds the idle relay's mark
  (``relay/idle.py``), so that each transaction notifies;
- ``+ job, no NOTIFY, no trigger``: as ``+ job, no NOTIFY`` with the history trigger
  disabled for these runs (so without the ``enqueued`` history row: what that row costs);
- ``+ bare job INSERT``: a plain ``INSERT ... VALUES`` of the same job row, trigger disabled
  (what enqueue_one's statement around the row costs: its CTE and the key-lock subquery).

The last two change the schema of the benchmark's own database for their runs only.

The kinds run in turn, ``--rounds`` times; each line gives the median transactions per
second and the share of the domain transaction's time each adds. Needs pgbench (Debian:
package postgresql, /usr/lib/postgresql/*/bin). Uses ``OUTBOX_DSN``, else PostgreSQL on
127.0.0.1:5432, else the embedded server, and a database of its own that it drops at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from bench.overhead import ENTRIES, relay_idle
from outbox import locks
from outbox.database import create_engine, libpq_dsn
from outbox.sql import queries
from outbox.testing import server_dsn, temporary_database

DOMAIN = "INSERT INTO bench_entries (account, amount) VALUES ('acc-1', 1250);"
NOTIFY = "SELECT pg_notify('outbox_jobs', 'default');"
RELAY_IDLE = "+ enqueue, a relay idle"
#: enqueue_one's last subquery, which looks for an idle relay and notifies.
WOKEN = re.compile(r"FROM \(\s*SELECT CASE .*\) AS woken", re.DOTALL)
#: The kinds run with the trigger that writes the ``enqueued`` history row disabled.
NO_TRIGGER = ("+ job, no NOTIFY, no trigger", "+ bare job INSERT")
TRIGGER = "ALTER TABLE outbox_jobs {} TRIGGER outbox_jobs_enqueued"
#: enqueue_one's parameters for one job of the plain case (no key, no delay, no idempotency
#: key), as SQL: the statement itself comes from outbox/sql/enqueue.sql.
PLAIN_JOB = {
    "uuid": "gen_random_uuid()",
    "type": "'ledger.posted'",
    "queue": "'default'",
    "key": "NULL",
    "payload": """'{"entry": 1, "client": 1}'""",
    "priority": "0",
    "run_at": "NULL",
    "delay": "NULL",
    "max_attempts": "25",
    "lock_class": str(locks.KEY_CLASS),
}
#: The same job row as a plain INSERT (run_at takes its default, now(), as enqueue_one's does).
BARE_JOB = (
    "INSERT INTO outbox_jobs (uuid, type, queue, payload, priority, max_attempts) "
    "VALUES ({uuid}, {type}, {queue}, {payload}, {priority}, {max_attempts});"
).format(**PLAIN_JOB)


def enqueue_one(notify: bool = True) -> str:
    """enqueue_one with PLAIN_JOB's values; without its look for an idle relay and its NOTIFY
    where ``notify`` is false."""
    sql = re.sub(r"(?<!:):(\w+)", lambda m: PLAIN_JOB[m.group(1)], queries["enqueue_one"])
    sql = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    if not notify:
        sql, found = WOKEN.subn("FROM (SELECT 1) AS woken", sql)
        if found != 1:
            raise RuntimeError("enqueue_one no longer ends with its woken subquery")
    return sql.strip().rstrip(";") + ";"


def scripts() -> dict[str, str]:
    """Each kind's transaction, as a pgbench script."""
    kinds = {
        "domain": [DOMAIN],
        "domain x2": [DOMAIN, DOMAIN],
        "+ NOTIFY": [DOMAIN, NOTIFY],
        "+ job, no NOTIFY": [DOMAIN, enqueue_one(notify=False)],
        "+ enqueue": [DOMAIN, enqueue_one()],
        RELAY_IDLE: [DOMAIN, enqueue_one()],
        NO_TRIGGER[0]: [DOMAIN, enqueue_one(notify=False)],
        NO_TRIGGER[1]: [DOMAIN, BARE_JOB],
    }
    # pgbench reads a statement up to its semicolon, over lines.
    return {name: "BEGIN;\n" + "\n".join(body) + "\nCOMMIT;\n" for name, body in kinds.items()}


def find_pgbench() -> str:
    found = shutil.which("pgbench") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None
    )
    if found is None:
        raise SystemExit(
            "pgbench is not installed: it comes with PostgreSQL's server package "
            "(Debian: postgresql); python -m bench.overhead measures from Python instead"
        )
    return found


def tps(pgbench: str, dsn: str, script: Path, clients: int, seconds: float) -> float:
    """Transactions per second of ``script`` run by ``clients`` connections for ``seconds``."""
    threads = min(clients, 2)
    command = [pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(threads)]
    command += ["-T", str(max(1, round(seconds))), "-f", str(script), libpq_dsn(dsn)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    found = re.search(r"tps = ([\d.]+)", done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"pgbench failed: {(done.stderr or done.stdout).strip()[:500]}")
    return float(found.group(1))


def kind_context(name: str, engine: sa.Engine, dsn: str) -> contextlib.AbstractContextManager[None]:
    """What the database looks like for kind ``name``'s runs."""
    if name in NO_TRIGGER:
        return trigger_off(engine)
    if name == RELAY_IDLE:
        return relay_idle(dsn)
    return contextlib.nullcontext()


@contextlib.contextmanager
def trigger_off(engine: sa.Engine) -> Iterator[None]:
    """The ``enqueued`` history trigger disabled for the block, enabled again after it."""
    with engine.begin() as conn:
        conn.execute(sa.text(TRIGGER.format("DISABLE")))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(TRIGGER.format("ENABLE")))


def run_kinds(
    engine: sa.Engine,
    pgbench: str,
    dsn: str,
    folder: Path,
    args: argparse.Namespace,
) -> dict[str, list[float]]:
    """Each kind's transactions per second, ``args.rounds`` times in turn."""
    with engine.begin() as conn:
        conn.execute(ENTRIES)
    files = {}
    for n, (name, text) in enumerate(scripts().items()):
        files[name] = folder / f"kind{n}.sql"
        files[name].write_text(text)
    found: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(args.rounds):
        for name, script in files.items():
            with kind_context(name, engine, dsn):
                found[name].append(tps(pgbench, dsn, script, args.clients, args.seconds))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds < 1 or args.rounds < 1:
        parser.error("--clients, --seconds and --rounds must be 1 or more")
    pgbench = find_pgbench()
    print("$ python -m bench.overhead_sql " + shlex.join(sys.argv[1:] if argv is None else argv))
    with temporary_database(server_dsn()) as dsn, tempfile.TemporaryDirectory() as folder:
        engine = create_engine(dsn)
        try:
            found = run_kinds(engine, pgbench, dsn, Path(folder), args)
        finally:
            engine.dispose()
    print(
        f"pgbench, {args.clients} clients, {args.seconds:g} s a run, {args.rounds} rounds in "
        "turn; median transactions/s (min-max), and what each adds to the domain transaction:"
    )
    base = statistics.median(found["domain"])
    for name, values in found.items():
        median = statistics.median(values)
        added = "" if name == "domain" else f"  adds {100 * (base / median - 1):.0f}%"
        print(f"  {name:30s} {median:9,.0f} ({min(values):,.0f}-{max(values):,.0f}){added}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
