"""The demo: a ledger takes transfers, each enqueueing its posting in the same transaction;
then a relay process posts them, and the balances are checked against the entries."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import psycopg.sql
import sqlalchemy as sa
from rich.console import Console
from rich.progress import Progress
from sqlalchemy.orm import Session

import outbox
import outbox.schema
from outbox import migrate
from outbox.audit import seal, verify
from outbox.cli.status import render
from outbox.database import (
    create_engine,
    database_name,
    libpq_dsn,
    sqlalchemy_url,
    with_database,
)
from outbox.demo.handlers import SECRET
from outbox.demo.models import Base, Entry, Notice
from outbox.demo.receiver import Receiver
from outbox.demo.transfers import (
    open_account,
    projection_mismatches,
    transfer,
    unbalanced_transfers,
)
from outbox.status import snapshot

DATABASE = "outbox_demo"
#: The comment the demo puts on its database: the only kind it will drop and remake.
MARKER = "outbox demo"
LIVE_JOBS = sa.text("SELECT count(*) FROM outbox_jobs")


@contextlib.contextmanager
def demo_database(server: str, name: str = DATABASE) -> Iterator[str]:
    """A database of the demo's own on ``server``, made afresh, so no other data is touched.

    An existing database of that name is dropped only if the demo made it (its comment is
    ``MARKER``); any other is refused, so ``--database production`` loses nothing.
    """
    name = database_name(name)
    admin = sqlalchemy_url(server)
    if admin.database == name:  # a database cannot be dropped from a session inside it
        admin = admin.set(database="postgres")
    try:
        with psycopg.connect(libpq_dsn(admin.render_as_string(hide_password=False))) as conn:
            conn.autocommit = True
            _make_afresh(conn, name)
    except psycopg.errors.InsufficientPrivilege:
        raise outbox.ConfigurationError(
            f"the demo creates a database named {name}: give the role CREATEDB, "
            "or point OUTBOX_DSN at a server where it may"
        ) from None
    except psycopg.OperationalError as exc:
        raise outbox.ConfigurationError(f"cannot reach the database: {exc}") from None
    yield with_database(server, name)


def _make_afresh(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    database = psycopg.sql.Identifier(name)
    found = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        [name],
    ).fetchone()
    if found is not None:
        if found[0] != MARKER:
            raise outbox.ConfigurationError(
                f"database {name} exists and the demo did not make it (it has no "
                f"'{MARKER}' comment): the demo drops and remakes its database, so it "
                "leaves this one alone. Choose another name with --database NAME, or drop "
                "it yourself if it is an old demo's"
            )
        conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(database))
    conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(database))
    conn.execute(
        psycopg.sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            database, psycopg.sql.Literal(MARKER)
        )
    )


def run_relay(
    dsn: str,
    engine: sa.Engine,
    console: Console,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> bool:
    """Run a relay process until the queues are empty; True if they emptied in time."""
    with engine.connect() as connection:
        total = left = connection.execute(LIVE_JOBS).scalar_one()
    relay = subprocess.Popen(
        [sys.executable, "-m", "outbox", "relay", "--app", "outbox.demo.handlers:registry",
         "--log-level", "warning", "--metrics-addr", "off"],
        # never on a command line: it may hold a password
        env={**os.environ, **(env or {}), "OUTBOX_DSN": dsn},
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("relay running the jobs", total=total)
            while time.monotonic() < deadline and relay.poll() is None:
                with engine.connect() as connection:
                    left = connection.execute(LIVE_JOBS).scalar_one()
                progress.update(task, completed=total - left)
                if left == 0:
                    break
                time.sleep(0.1)
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(60)
    console.print(f"relay stopped on SIGTERM with exit code {code}")
    return left == 0 and code == 0


def show_partner(partner: Receiver, engine: sa.Engine, console: Console, transfers: int) -> bool:
    """What the partner's webhook receiver took: one applied event per transfer, a delivery
    sent again skipped by its inbox, a forged one refused; True when so."""
    replayed = forged = 0
    if partner.last is not None:
        body, headers = partner.last
        replayed = partner.send(body, headers)  # as a relay killed after the answer would
        forged = partner.send(body.replace(b'"amount":', b'"amount":1'), headers)
    with engine.connect() as connection:
        applied, distinct = connection.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(Notice.message_id)))
        ).one()
    console.print(
        f"partner webhook: {partner.answers[204]} transfer.posted events, signatures "
        f"verified, {applied} applied"
    )
    console.print(
        f"sent again: HTTP {replayed}, skipped by the inbox; forged: HTTP {forged}, refused"
    )
    return applied == distinct == transfers and replayed == 200 and forged == 401


def audit(connection: sa.Connection, console: Console) -> bool:
    """Seal what the relay left unsealed, then verify the whole chain (G7)."""
    connection.rollback()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seal.seal_all(connection)  # other sessions' open transactions may hold it back a moment
        lag = seal.lag_seconds(connection)
        connection.rollback()
        if not lag:
            break
        time.sleep(0.1)
    try:
        report = verify.verify(connection)
    except verify.VerificationError as exc:
        console.print(f"[red]audit: {exc}[/]")
        return False
    finally:
        connection.rollback()
    history = connection.execute(sa.text("SELECT count(*) FROM outbox_history")).scalar_one()
    console.print(
        f"audit: digest chain verified: {report.seals} seal(s) over {report.rows} history rows "
        f"(of {history})"
    )
    latest = report.last_digest.hex() if report.last_digest else "-"
    console.print(f"latest digest: {latest}", highlight=False, soft_wrap=True)
    return report.rows == history


def run(
    server: str,
    console: Console,
    *,
    database: str = DATABASE,
    transfers: int = 50,
    accounts: int = 5,
    inspect: str | None = None,
) -> bool:
    """Run the demo in ``database`` on ``server``; True when every check held.

    ``inspect`` is the command that shows the demo's database, printed at the end.
    """
    rng = random.Random(7)
    with demo_database(server, database) as dsn:
        engine = create_engine(dsn)
        migrate.upgrade(engine)
        Base.metadata.create_all(engine)
        console.print(f"[bold]outbox demo[/] on {sqlalchemy_url(dsn).render_as_string()}")

        with Session(engine) as session:
            people = [open_account(session, f"customer-{n}") for n in range(accounts)]
            session.commit()
            with Progress(
                console=console, transient=True, disable=not console.is_terminal
            ) as progress:
                task = progress.add_task(
                    "transfers, each with its entries and jobs", total=transfers
                )
                for n in range(transfers):
                    source, target = rng.sample(people, 2)
                    transfer(session, f"T{n}", source, target, rng.randint(1, 50_000))
                    session.commit()
                    progress.advance(task)
            console.print(f"{transfers} transfers committed, each with its entries and jobs")

            retries = min(5, transfers)  # earlier transfers, sent again by a client
            retried = [transfer(session, f"T{n}", people[0], people[1], 1) for n in range(retries)]
            session.commit()
            duplicates = sum(h.duplicate for h in retried)
            console.print(
                f"{retries} client retries of earlier transfers: "
                f"{duplicates} recognised as duplicates"
            )

            transfer(session, "T-rolled-back", people[0], people[1], 100)
            session.rollback()
            left = session.scalar(
                sa.select(sa.func.count())
                .select_from(outbox.schema.jobs)
                .where(outbox.schema.jobs.c.idempotency_key == "transfer:T-rolled-back")
            )
            console.print(f"1 transfer rolled back: {left} jobs left behind")
            unbalanced = unbalanced_transfers(session)
            total = session.scalar(sa.select(sa.func.coalesce(sa.func.sum(Entry.amount), 0)))

        with engine.connect() as connection:
            render(snapshot(connection), console)
        console.print("starting a relay: outbox relay --app outbox.demo.handlers:registry")
        with Receiver(engine, SECRET) as partner:
            where = {"LEDGER_WEBHOOK_URL": partner.url, "LEDGER_WEBHOOK_SECRET": SECRET}
            drained = run_relay(dsn, engine, console, env=where)
            partnered = show_partner(partner, engine, console, transfers)
        with engine.connect() as connection:
            render(snapshot(connection), console)
            audited = audit(connection, console)
        with Session(engine) as session:
            mismatched = projection_mismatches(session)
            unposted = session.scalar(
                sa.select(sa.func.count()).select_from(Entry).where(~Entry.posted)
            )
        engine.dispose()

    ok = duplicates == retries and left == 0 and not unbalanced and total == 0
    ok = ok and drained and not mismatched and unposted == 0 and audited and partnered
    verdict = "[green]balanced[/]" if not unbalanced and total == 0 else "[red]UNBALANCED[/]"
    console.print(f"ledger: {verdict} (sum of all entries: {total})")
    console.print(
        f"posted balances: {mismatched if mismatched else '[green]match the entries[/]'}; "
        f"{unposted} entries left unposted"
    )
    if not ok:
        console.print("[red]a demo check failed[/]")
    if inspect:
        console.print(f"inspect it with: {inspect}", markup=False, highlight=False, soft_wrap=True)
    return ok
