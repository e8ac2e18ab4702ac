"""Unit tests need no database and no fixtures of their own.

Hypothesis keeps its example database and caches in a ``.hypothesis`` folder of the
working directory, and writes it as soon as a property test is collected. Unit tests
leave the working tree as they found it, so that folder goes to the temporary
directory instead (unless HYPOTHESIS_STORAGE_DIRECTORY names one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import configuration

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "outbox-hypothesis")
