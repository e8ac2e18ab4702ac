-- name: relay_heartbeat
-- A relay announces itself and renews its heartbeat; status and metrics list it until its
-- row expires (a relay that dies leaves a row that simply stops being live).
INSERT INTO outbox_relays (relay, host, pid, queues, concurrency, version, expires_at)
VALUES (:relay, :host, :pid, CAST(:queues AS text[]), :concurrency, :version,
        now() + CAST(:ttl AS interval))
ON CONFLICT (relay) DO UPDATE
SET heartbeat_at = now(), expires_at = now() + CAST(:ttl AS interval);

-- name: relay_gone
-- A relay that stops cleanly says so; rows of relays long gone are cleared by the way.
DELETE FROM outbox_relays
WHERE relay = :relay OR expires_at < now() - interval '1 day';
