"""Unit tests need no database; the one thing shared here keeps Hypothesis's files in a
temporary folder instead of a ``.hypothesis`` folder in the working tree."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import configuration


@pytest.fixture(scope="module")
def hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis caches its Unicode tables on disk; point it at a temporary folder."""
    configuration.set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    configuration.set_hypothesis_home_dir(None)
