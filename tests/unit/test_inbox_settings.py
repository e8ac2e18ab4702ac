"""The inbox's retention setting: read from OUTBOX_INBOX_RETENTION, refused when unusable."""

from __future__ import annotations

from datetime import timedelta

import pytest

from outbox import ConfigurationError, Settings


def test_receipts_are_kept_seven_days_unless_told_otherwise() -> None:
    assert Settings.load(env={}).inbox_retention == timedelta(days=7)
    assert Settings.load(env={"OUTBOX_INBOX_RETENTION": "30d"}).inbox_retention == timedelta(
        days=30
    )
    assert Settings.load(env={"OUTBOX_INBOX_RETENTION": "30d"}, inbox_retention=timedelta(
        hours=1
    )).inbox_retention == timedelta(hours=1)  # fmt: skip


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"OUTBOX_INBOX_RETENTION": "a week"}, "OUTBOX_INBOX_RETENTION='a week' is not a duration"),
        ({"OUTBOX_INBOX_RETENTION": "0"}, "inbox_retention must be longer than zero"),
    ],
)
def test_an_unusable_inbox_retention_is_refused_naming_it(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        Settings.load(env=env)
