"""``outbox ui``: serve the web console (outbox/console) with uvicorn."""

from __future__ import annotations

import dataclasses
import os

import click

from outbox import migrate
from outbox.cli.context import Context, clear_errors
from outbox.errors import ConfigurationError
from outbox.settings import parse_duration


@click.command("ui")
@click.option(
    "--addr", envvar="OUTBOX_UI_ADDR", default="127.0.0.1:9465", show_default=True,
    metavar="HOST:PORT", help="Where to answer [env OUTBOX_UI_ADDR]. Loopback unless sign-in "
    "is set.",
)  # fmt: skip
@click.option(
    "--allow-actions", is_flag=True, envvar="OUTBOX_UI_ALLOW_ACTIONS",
    help="Offer retry and cancel, recorded in history with the signed-in user [env "
    "OUTBOX_UI_ALLOW_ACTIONS]. Without it the console changes nothing.",
)  # fmt: skip
@click.option(
    "--base-path", envvar="OUTBOX_UI_BASE_PATH", default="", metavar="/PATH",
    help="Serve every page under this path, as a reverse proxy passes it on (for example "
    "/outbox) [env OUTBOX_UI_BASE_PATH].",
)  # fmt: skip
@click.option(
    "--basic-auth", envvar="OUTBOX_UI_BASIC_AUTH", metavar="USERS",
    help="Sign users in with HTTP basic auth: user:password, several separated by commas "
    "[env OUTBOX_UI_BASIC_AUTH: prefer it, a command line is visible to every user of "
    "the machine].",
)  # fmt: skip
@click.option(
    "--user-header", envvar="OUTBOX_UI_USER_HEADER", metavar="NAME",
    help="A reverse proxy in front signs users in and names them in this header (for "
    "example X-Forwarded-User): the actor of actions [env OUTBOX_UI_USER_HEADER]. Only "
    "where no one but the proxy reaches the console.",
)  # fmt: skip
@click.option(
    "--allow-no-sign-in", is_flag=True,
    help="Answer on an address other machines reach without any sign-in (a read-only "
    "console on a trusted network).",
)  # fmt: skip
@click.option(
    "--statement-timeout", envvar="OUTBOX_UI_STATEMENT_TIMEOUT", default="5s",
    show_default=True, metavar="DURATION",
    help="Stop any query of the console that runs longer [env OUTBOX_UI_STATEMENT_TIMEOUT].",
)  # fmt: skip
@click.pass_obj
@clear_errors
def command(
    ctx: Context, addr: str, allow_actions: bool, base_path: str, basic_auth: str | None,
    user_header: str | None, allow_no_sign_in: bool, statement_timeout: str,
) -> None:  # fmt: skip
    """Serve the web console: queues, jobs and their history, the seal chain, relays.

    Read-only by default; give the console a read-only database role (see
    docs/howto/console.md) and it cannot change anything even if asked. Needs the
    ui extra: pip install 'outbox-relay[ui]'.

    OUTBOX_UI_SECRET signs the forms' anti-forgery tokens: set the same one for
    several consoles behind one balancer (else each start makes its own).
    """
    try:
        import uvicorn

        from outbox.console import ConsoleConfig, create_app
        from outbox.console.config import is_loopback, parse_addr, parse_users
    except ImportError as exc:
        raise click.ClickException(
            f"outbox ui needs the ui extra ({exc.name} is missing): pip install 'outbox-relay[ui]'"
        ) from None
    try:
        host, port = parse_addr(addr)
        users = parse_users(basic_auth) if basic_auth else {}
        config = ConsoleConfig(
            allow_actions=allow_actions, base_path=base_path.rstrip("/"), users=users,
            user_header=user_header or None,
            statement_timeout=parse_duration(statement_timeout, name="--statement-timeout"),
        )  # fmt: skip
        if secret := os.environ.get("OUTBOX_UI_SECRET"):
            config = dataclasses.replace(config, secret=secret.encode())
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    signed_in = bool(users or config.user_header)
    if not signed_in and not is_loopback(host):
        if not allow_no_sign_in:
            raise click.UsageError(
                f"{addr} is reachable from other machines and no one would have to sign in: "
                "set OUTBOX_UI_BASIC_AUTH=user:password, or --user-header for a proxy that "
                "signs users in, or answer on 127.0.0.1, or give --allow-no-sign-in"
            )
        if allow_actions:
            raise click.UsageError(
                "actions are recorded with who took them, and no one signs in here: set "
                "OUTBOX_UI_BASIC_AUTH=user:password, or --user-header for a proxy that signs "
                "users in"
            )
    engine = ctx.engine(
        pool_size=4, max_overflow=4, pool_pre_ping=True,
        connect_args={"application_name": "outbox ui"},
    )  # fmt: skip
    with engine.connect() as connection:
        migrate.check_at_head(connection)
    mode = "actions allowed" if allow_actions else "read-only"
    sign_in = (
        f"basic auth for {len(users)} user(s)" if users
        else f"users named by the proxy in {config.user_header}" if config.user_header
        else "no sign-in"
    )  # fmt: skip
    where = f"[{host}]" if ":" in host else host
    click.echo(f"outbox console on http://{where}:{port}{config.base_path}/ ({mode}, {sign_in})")
    try:
        uvicorn.run(
            create_app(engine, config), host=host, port=port, log_level="warning",
            proxy_headers=True, server_header=False,
        )  # fmt: skip
    finally:
        engine.dispose()
