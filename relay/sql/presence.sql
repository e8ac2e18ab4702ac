-- name: relay_heartbeat
-- A relay announces itself and renews its heartbeat; status and metrics list it until its
-- row expires (a relay that dies leaves a row that simply stops being live). It names the job
-- types it has handlers for, the only ones it claims (claim.sql): a waiting job whose type no
-- live relay of its queue names waits for a deploy, and status and metrics say so.
INSERT INTO outbox_relays (relay, host, pid, queues, concurrency, version, expires_at, types)
VALUES (:relay, :host, :pid, CAST(:queues AS text[]), :concurrency, :version,
        now() + CAST(:ttl AS interval), CAST(:types AS text[]))
ON CONFLICT (relay) DO UPDATE
SET heartbeat_at = now(), expires_at = now() + CAST(:ttl AS interval),
    types = EXCLUDED.types;

-- name: relay_gone
-- A relay that stops cleanly says so; rows of relays long gone are cleared by the way.
DELETE FROM outbox_relays
WHERE relay = :relay OR expires_at < now() - interval '1 day';
