"""``python -m outbox`` is the ``outbox`` console script."""

from outbox.cli import main

main()
