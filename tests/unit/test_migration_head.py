"""The revision the code needs, written down so that checking it needs no Alembic, is the
head of the migrations folder."""

from __future__ import annotations

import subprocess
import sys

from alembic.script import ScriptDirectory

from outbox import migrate


def test_the_revision_this_code_needs_is_the_head_of_its_migrations() -> None:
    assert ScriptDirectory.from_config(migrate.alembic_config()).get_current_head() == migrate.HEAD


def test_the_cli_and_the_relay_start_without_alembic_or_the_asyncio_extension() -> None:
    """A relay checks the schema's revision with one query; Alembic (70 ms of start-up) is for
    `outbox migrate`, SQLAlchemy's asyncio extension (30 ms) for applications that use it."""
    code = (
        "import sys, outbox.cli, outbox_relay.worker; "
        "print(sorted(m for m in ('alembic', 'sqlalchemy.ext.asyncio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
