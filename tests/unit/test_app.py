"""``outbox relay --app module:attribute``: what is refused, and why."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from outbox_relay.app import load_registry

import outbox
from outbox.errors import ConfigurationError

APP = """
import outbox

handlers = outbox.Registry()
handlers.register("a.b", lambda job: None)

empty = outbox.Registry()

ticks = outbox.Registry()
ticks.schedule("nightly", "report.build", cron="0 3 * * *")

not_a_registry = {"a.b": print}
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"relay_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_registry_with_handlers_is_loaded_from_the_current_directory(app: str) -> None:
    assert "a.b" in load_registry(f"{app}:handlers")


def test_a_registry_with_only_schedules_is_a_relay_that_enqueues_ticks(app: str) -> None:
    registry = load_registry(f"{app}:ticks")
    assert [s.name for s in registry.schedules] == ["nightly"]
    assert len(registry) == 0


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("empty", "has no handlers and no schedules registered: nothing to run"),
        ("not_a_registry", "is a dict, not an outbox.Registry"),
        ("missing", "has no 'missing'"),
    ],
)
def test_what_is_not_a_registry_to_run_is_refused_with_its_reason(
    app: str, attribute: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        load_registry(f"{app}:{attribute}")


@pytest.mark.parametrize("spec", ["", "module", ":registry", "module:"])
def test_a_spec_that_is_not_module_attribute_is_refused(spec: str) -> None:
    with pytest.raises(ConfigurationError, match="should be module:attribute"):
        load_registry(spec)


def test_a_module_that_cannot_be_imported_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot import no_such_module_here"):
        load_registry("no_such_module_here:registry")


def test_every_timedelta_schedule_counts_too() -> None:
    registry = outbox.Registry()
    registry.schedule("often", "a.b", every=timedelta(seconds=5))
    assert registry.schedules
