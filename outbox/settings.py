"""The one settings object: arguments first, then ``OUTBOX_*`` variables, then defaults."""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import re
import reprlib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import platformdirs

from outbox import validate
from outbox.errors import ConfigurationError, InvalidJob

MIB = 1024 * 1024
#: The longest lease: relay connections set idle_in_transaction_session_timeout to it, and
#: PostgreSQL takes at most 2**31 - 1 ms (24.8 days).
LEASE_MAX = timedelta(days=24)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str, *, name: str) -> timedelta:
    """``"90"`` and ``"90s"`` are seconds; ``ms``, ``m``, ``h`` and ``d`` are accepted too."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError(
            f"{name}={text!r} is not a duration; write a number of seconds or one "
            "followed by ms, s, m, h or d (for example 7d)"
        )
    try:
        return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    except (OverflowError, ValueError):
        raise ConfigurationError(f"{name}={text[:40]!r} is too long a duration") from None


def _parse_int(text: str, *, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigurationError(f"{name}={text!r} is not a whole number") from None


_INT_VARS = {"concurrency": "OUTBOX_CONCURRENCY", "claim_batch": "OUTBOX_CLAIM_BATCH"}
_DURATION_VARS = {
    "lease": "OUTBOX_LEASE",
    "poll_interval": "OUTBOX_POLL_INTERVAL",
    "rescue_interval": "OUTBOX_RESCUE_INTERVAL",
    "shutdown_grace": "OUTBOX_SHUTDOWN_GRACE",
    "handler_timeout": "OUTBOX_HANDLER_TIMEOUT",
    "seal_interval": "OUTBOX_SEAL_INTERVAL",
}


def _default_embedded_dir() -> Path:
    return platformdirs.user_cache_path("outbox") / "embedded-pg"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything outbox can be configured with, resolved once."""

    #: Where the database is: a libpq URL (``postgresql://``) or an SQLAlchemy URL
    #: (``postgresql+psycopg://``). ``None``: PostgreSQL on 127.0.0.1:5432 if it answers,
    #: else the embedded server (``outbox.database.find_server``).
    dsn: str | None = None
    #: The largest payload accepted at enqueue, in bytes of its JSON encoding.
    payload_limit: int = 1 * MIB
    #: How long an idempotency key is remembered after its first enqueue (G5).
    idempotency_retention: timedelta = timedelta(days=7)
    #: How long a consumer's inbox remembers a message id it received (``outbox.inbox``);
    #: ``outbox prune`` keeps receipts for this or ``idempotency_retention``, the longer.
    inbox_retention: timedelta = timedelta(days=7)
    #: The queue of a job enqueued without one and without a handler that names one.
    default_queue: str = "default"
    #: Attempts for a job whose enqueue and handler both leave ``max_attempts`` unset.
    default_max_attempts: int = 25
    #: Data folder of the embedded PostgreSQL used when no DSN is given.
    embedded_dir: Path = dataclasses.field(default_factory=_default_embedded_dir)
    #: Handlers a relay process runs at once (threads).
    concurrency: int = 16
    #: Most jobs one claim takes; claims follow the handlers' pace up to it (relay/pace.py).
    claim_batch: int = 500
    #: How long a claim is good for without a heartbeat; a dead relay's jobs are rescued after it.
    lease: timedelta = timedelta(seconds=30)
    #: How often an idle relay looks for work when no notification wakes it.
    poll_interval: timedelta = timedelta(seconds=1)
    #: How often each relay looks for expired leases.
    rescue_interval: timedelta = timedelta(seconds=5)
    #: How long SIGTERM waits for running handlers before the relay exits.
    shutdown_grace: timedelta = timedelta(seconds=30)
    #: Timeout of a handler that sets none.
    handler_timeout: timedelta = timedelta(minutes=5)
    #: How often the sealing relay (one at a time) extends the digest chain; 0 turns sealing
    #: off for these relays (another relay, or `outbox audit seal`, must then seal).
    seal_interval: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        self._check_types()
        try:
            validate.queue(self.default_queue)
        except InvalidJob as exc:
            raise ConfigurationError(f"default_queue: {exc}") from None
        if self.payload_limit < 1:
            raise ConfigurationError(
                f"payload_limit must be at least 1 byte, not {self.payload_limit}"
            )
        if self.idempotency_retention <= timedelta(0):
            raise ConfigurationError("idempotency_retention must be longer than zero")
        if self.inbox_retention <= timedelta(0):
            raise ConfigurationError("inbox_retention must be longer than zero")
        if self.default_max_attempts < 1:
            raise ConfigurationError(
                f"default_max_attempts must be at least 1, not {self.default_max_attempts}"
            )
        for name in ("concurrency", "claim_batch"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("lease", "poll_interval", "rescue_interval", "handler_timeout"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigurationError(f"{name} must be longer than zero")
        for name in ("shutdown_grace", "seal_interval"):
            if getattr(self, name) < timedelta(0):
                raise ConfigurationError(f"{name} must be zero or longer")
        if self.lease < timedelta(seconds=2):
            raise ConfigurationError("lease must be at least 2 seconds (heartbeats renew it)")
        if self.lease > LEASE_MAX:
            raise ConfigurationError(
                "lease must be at most 24 days (a relay's connections end a transaction left "
                "idle for that long, and PostgreSQL takes no longer timeout)"
            )

    def _check_types(self) -> None:
        """Refuse a value of the wrong type by the setting's name (a number of seconds where a
        timedelta belongs would otherwise fail deep inside with a TypeError); a path given as
        a string becomes a Path."""
        if self.dsn is not None and not isinstance(self.dsn, str):
            raise ConfigurationError(
                f"dsn must be a str (a postgresql:// URL) or None, not {_shown(self.dsn)}"
            )
        if isinstance(self.embedded_dir, str | os.PathLike):
            object.__setattr__(self, "embedded_dir", Path(self.embedded_dir))
        else:
            raise ConfigurationError(
                f"embedded_dir must be a path, not {_shown(self.embedded_dir)}"
            )
        for name in ("payload_limit", "default_max_attempts", *_INT_VARS):
            value = getattr(self, name)
            try:  # any integer type (numpy's too) but a bool
                if isinstance(value, bool):
                    raise TypeError
                object.__setattr__(self, name, operator.index(value))
            except TypeError:
                raise ConfigurationError(
                    f"{name} must be a whole number, not {_shown(value)}"
                ) from None
        for name in ("idempotency_retention", "inbox_retention", *_DURATION_VARS):
            value = getattr(self, name)
            if not isinstance(value, timedelta):
                raise ConfigurationError(
                    f"{name} must be a datetime.timedelta (for example timedelta(seconds=30)), "
                    f"not {_shown(value)}"
                )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``overrides``, then the environment, then the defaults.

        ``None`` in ``overrides`` means "not given", so command-line options that
        were left out fall through to the environment.
        """
        env = os.environ if env is None else env
        if not isinstance(env, Mapping):
            raise ConfigurationError(
                f"env must be a mapping of variable names to values, not {type(env).__name__}"
            )
        values: dict[str, Any] = {}
        if dsn := env.get("OUTBOX_DSN"):
            values["dsn"] = dsn
        if limit := env.get("OUTBOX_PAYLOAD_LIMIT"):
            values["payload_limit"] = _parse_int(limit, name="OUTBOX_PAYLOAD_LIMIT")
        if retention := env.get("OUTBOX_IDEMPOTENCY_RETENTION"):
            values["idempotency_retention"] = parse_duration(
                retention, name="OUTBOX_IDEMPOTENCY_RETENTION"
            )
        if retention := env.get("OUTBOX_INBOX_RETENTION"):
            values["inbox_retention"] = parse_duration(retention, name="OUTBOX_INBOX_RETENTION")
        if queue := env.get("OUTBOX_DEFAULT_QUEUE"):
            values["default_queue"] = queue
        if attempts := env.get("OUTBOX_DEFAULT_MAX_ATTEMPTS"):
            values["default_max_attempts"] = _parse_int(
                attempts, name="OUTBOX_DEFAULT_MAX_ATTEMPTS"
            )
        if embedded := env.get("OUTBOX_EMBEDDED_DIR"):
            values["embedded_dir"] = Path(embedded)
        for name, var in _INT_VARS.items():
            if text := env.get(var):
                values[name] = _parse_int(text, name=var)
        for name, var in _DURATION_VARS.items():
            if text := env.get(var):
                values[name] = parse_duration(text, name=var)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigurationError(f"unknown settings: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _shown(value: object) -> str:
    """A wrong value for a message: its type and (shortened) repr."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


@functools.cache
def default_settings() -> Settings:
    """The settings of this process's environment, read once."""
    return Settings.load()
