"""Leadership of one relay among many: a session-level advisory lock on a connection kept
for the purpose. The relay holding it does the work; when it dies its session ends, the lock
is free, and the next relay to try takes over."""

from __future__ import annotations

import sqlalchemy as sa

TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:c, :i)")


class Leadership:
    def __init__(self, engine: sa.Engine, lock: tuple[int, int]) -> None:
        self._engine = engine
        self._lock = lock
        self.connection: sa.Connection | None = None

    def take(self) -> sa.Connection | None:
        """The leader's connection, taking the lock first if free; None if another holds it."""
        if self.connection is not None:
            return self.connection
        connection = self._engine.connect()
        try:
            got = connection.execute(TRY_LOCK, {"c": self._lock[0], "i": self._lock[1]}).scalar()
            connection.commit()
        except BaseException:
            connection.invalidate()
            connection.close()
            raise
        if not got:
            connection.close()
            return None
        self.connection = connection
        return connection

    def resign(self) -> None:
        """End leadership: the connection is closed for good, never returned to the pool with
        the lock still held."""
        if self.connection is not None:
            self.connection.invalidate()
            self.connection.close()
            self.connection = None
