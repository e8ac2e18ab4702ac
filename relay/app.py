"""Finding the application's registry from ``module:attribute``."""

from __future__ import annotations

import importlib
import os
import sys

from outbox.errors import ConfigurationError
from outbox.registry import Registry


def load_registry(spec: str) -> Registry:
    """Import ``module:attribute`` (the current directory is importable) and check it."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"--app {spec!r} should be module:attribute, e.g. myapp.jobs:registry"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--app {spec!r}: cannot import {module_name}: {exc}") from None
    try:
        registry = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"--app {spec!r}: {module_name} has no {attribute!r}") from None
    if not isinstance(registry, Registry):
        raise ConfigurationError(
            f"--app {spec!r} is a {type(registry).__name__}, not an outbox.Registry"
        )
    if not len(registry) and not registry.schedules:
        raise ConfigurationError(
            f"--app {spec!r} has no handlers and no schedules registered: nothing to run"
        )
    return registry
