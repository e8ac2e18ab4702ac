-- name: release
-- On shutdown, jobs claimed but not started go back to pending as they were, their attempt
-- given back: they never ran (G2). History records the release as a rescue by this relay.
WITH released AS (
    UPDATE outbox_jobs AS j
    SET state = 'pending', attempt = j.attempt - 1, lease_expires_at = NULL
    WHERE j.uuid = ANY(CAST(:uuid AS uuid[])) AND j.state = 'running' AND j.relay = :relay
    RETURNING j.uuid, j.type, j.queue, j.key, j.attempt
)
INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay, reason)
SELECT uuid, 'rescued', type, queue, key, attempt, :relay, 'released unstarted at shutdown'
FROM released;

-- name: extend_leases
-- Heartbeat: push out the leases of jobs this relay is still running within their timeouts.
-- Rows locked by a completion in progress are skipped, not waited for.
UPDATE outbox_jobs AS j
SET lease_expires_at = now() + CAST(:lease AS interval)
WHERE j.uuid IN (
    SELECT uuid FROM outbox_jobs
    WHERE uuid = ANY(CAST(:uuid AS uuid[])) AND state = 'running' AND relay = :relay
    FOR UPDATE SKIP LOCKED
);
