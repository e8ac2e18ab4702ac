"""The digest chain at scale: sealing and verifying N history rows, exporting and pruning them.

    python -m bench.audit [--rows 1000000] [--per-transaction 1000]

Writes N history rows (as relays would: many transactions of ``--per-transaction`` rows,
with payloads, errors and durations), then times `seal_all`, `verify`, an export and a
prune of everything exported. Sealing runs in a thread of its own, as in a relay, and the
process's resident memory before it and at its peak (Linux's VmRSS and VmHWM) show what a
backlog's sealing costs the relay that seals it. Uses OUTBOX_DSN, else 127.0.0.1:5432, else
the embedded server, in a database of its own.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from outbox.audit import retention, seal, verify
from outbox.database import create_engine
from outbox.testing import server_dsn, temporary_database

FILL = sa.text("""
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, payload, relay,
                                error, duration_ms)
    SELECT gen_random_uuid(),
           (ARRAY['enqueued', 'claimed', 'succeeded', 'failed'])[1 + n % 4],
           'ledger.post', 'default', 'acct:' || (n % 1000), n % 3,
           CASE WHEN n % 4 = 0 THEN jsonb_build_object('amount', n, 'currency', 'EUR') END,
           CASE WHEN n % 4 <> 0 THEN 'host:4242:abcdef' END,
           CASE WHEN n % 4 = 3 THEN '{"type": "builtins.RuntimeError", "message": "x"}'::jsonb
           END,
           CASE WHEN n % 4 >= 2 THEN n % 97 * 0.731 END
    FROM generate_series(CAST(:start AS bigint), CAST(:start AS bigint) + :rows - 1) AS n
""")


def timed(what: str, func: object, *args: object, **kwargs: object) -> object:
    started = time.perf_counter()
    result = func(*args, **kwargs)  # type: ignore[operator]
    elapsed = time.perf_counter() - started
    print(f"  {what}: {elapsed:.2f}s")
    return result


def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process in MiB; 0 where /proc lacks it."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def in_thread(func: Callable[[], list[seal.Seal]]) -> list[seal.Seal]:
    """``func()`` run in a thread of its own (the relay's sealer runs in one), its result."""
    result: list[list[seal.Seal]] = []
    thread = threading.Thread(target=lambda: result.append(func()))
    thread.start()
    thread.join()
    if not result:
        raise SystemExit("sealing failed: see the thread's traceback above")
    return result[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--per-transaction", type=int, default=1000)
    args = parser.parse_args(argv)
    print("$ python -m bench.audit " + shlex.join(sys.argv[1:] if argv is None else argv))
    with temporary_database(server_dsn(), prefix="outbox_bench") as dsn:
        engine = create_engine(dsn, poolclass=sa.NullPool)
        started = time.perf_counter()
        with engine.connect() as conn:
            for start in range(0, args.rows, args.per_transaction):
                rows = min(args.per_transaction, args.rows - start)
                conn.execute(FILL, {"start": start, "rows": rows})
                conn.commit()
        print(f"{args.rows:,} history rows written in {time.perf_counter() - started:.1f}s")
        with engine.connect() as conn:
            before = resident_mib("VmRSS")
            started = time.perf_counter()
            sealed = in_thread(lambda: seal.seal_all(conn))
            took = time.perf_counter() - started
            print(f"  seal: {len(sealed)} seals in {took:.2f}s = {args.rows / took:,.0f} rows/s")
            print(
                f"  resident memory: {before:.1f} MiB before sealing, "
                f"{resident_mib('VmHWM'):.1f} MiB at its peak, {resident_mib('VmRSS'):.1f} after"
            )
            started = time.perf_counter()
            report = verify.verify(conn)
            took = time.perf_counter() - started
            print(
                f"  verify: {report.seals} seals, {report.rows:,} rows in {took:.2f}s = "
                f"{report.rows / took:,.0f} rows/s"
            )
            conn.rollback()
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "history.jsonl"
                with path.open("x", encoding="utf-8") as out:
                    timed("export", retention.export, conn, out)
                size = path.stat().st_size
                print(f"  export size: {size / 2**20:.0f} MiB")
                timed("verify export", retention.verify_export, path)
                done = timed(
                    "prune", retention.prune, conn, export_path=path,
                    older_than=timedelta(0), actor="bench",
                )  # fmt: skip
                assert isinstance(done, retention.Pruned)
                print(f"  pruned {done.rows:,} rows in {done.seals} seals")
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
