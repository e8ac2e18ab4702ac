"""No-op handlers for the relay benchmarks: ``--app bench.noop:registry``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import outbox

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

registry = outbox.Registry()


@registry.handler("bench.noop")
def noop(job: outbox.Job) -> None:
    """Does nothing: what is measured is the relay's own work per job."""


@registry.handler("bench.noop_session")
def noop_session(job: outbox.Job, session: Session) -> None:
    """Does nothing in the completion transaction."""
