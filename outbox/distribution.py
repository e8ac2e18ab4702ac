"""The distribution outbox is installed as, and its version.

The import name is ``outbox``; the distribution is ``outbox-relay``, because ``outbox`` on
PyPI is an unrelated project. Code that asks the installed metadata asks it here.
"""

from __future__ import annotations

import importlib.metadata

NAME = "outbox-relay"


def version() -> str:
    return importlib.metadata.version(NAME)
