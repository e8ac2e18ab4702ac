"""Peer PostgreSQL job queues (procrastinate, pgqueuer) driven in their own virtualenv.

``python -m bench.peers.install`` prepares ``.bench-venv``; the drivers in this folder are
standalone scripts run with that venv's python and never import ``outbox``.
"""
