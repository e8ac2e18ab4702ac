"""The relay daemon: claims, runs and completes the jobs that applications enqueue.

It imports :mod:`outbox` for the models, the handler registry and shared SQL;
:mod:`outbox` never imports it.
"""
