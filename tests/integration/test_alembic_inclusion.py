"""An application with its own Alembic history includes outbox's migrations as a branch."""

from __future__ import annotations

import textwrap
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from outbox import migrate
from outbox.database import create_engine
from outbox.testing import temporary_database

APP_ENV = """
from alembic import context
import sqlalchemy as sa

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
"""

APP_REVISION = """
from alembic import op
import sqlalchemy as sa

revision = "app_0001"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade():
    op.create_table("payments", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("payments")
"""


def app_alembic(folder: Path, *, with_app_revision: bool) -> Config:
    """An application's Alembic environment whose version_locations include outbox's."""
    (folder / "versions").mkdir()
    (folder / "env.py").write_text(textwrap.dedent(APP_ENV))
    locations = [str(migrate.migrations_dir() / "versions")]
    if with_app_revision:
        (folder / "versions" / "app_0001.py").write_text(textwrap.dedent(APP_REVISION))
        locations.insert(0, str(folder / "versions"))
    config = Config()
    config.set_main_option("script_location", str(folder))
    config.set_main_option("path_separator", "space")
    config.set_main_option("version_locations", " ".join(locations))
    return config


def test_app_history_with_outbox_versions_upgrades_both_branches(
    server: str, tmp_path: Path
) -> None:
    config = app_alembic(tmp_path, with_app_revision=True)
    with temporary_database(server, prefix="outbox_app", migrated=False) as dsn:
        engine = create_engine(dsn, poolclass=sa.NullPool)
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "heads")
            conn.commit()
            tables = set(sa.inspect(conn).get_table_names())
            versions = {
                r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            }
        engine.dispose()
    assert {"payments", "outbox_jobs", "outbox_history", "outbox_idempotency"} <= tables
    assert versions == {"app_0001", migrate.head()}


def test_outbox_commands_see_a_schema_migrated_through_the_app_history(
    server: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from outbox.cli import cli

    config = app_alembic(tmp_path, with_app_revision=False)
    with temporary_database(server, prefix="outbox_app", migrated=False) as dsn:
        engine = create_engine(dsn, poolclass=sa.NullPool)
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "heads")
            conn.commit()
        engine.dispose()
        runner = CliRunner()
        status = runner.invoke(cli, ["--dsn", dsn, "status", "--json"])
        assert status.exit_code == 0, status.output
        again = runner.invoke(cli, ["--dsn", dsn, "migrate"])
        assert again.exit_code == 0, again.output
        assert "already at" in again.output
        check = runner.invoke(cli, ["--dsn", dsn, "migrate", "--check"])
        assert check.exit_code == 0, check.output
