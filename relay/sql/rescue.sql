-- name: rescue_expired
-- Jobs whose lease expired (their relay died, hung, or was cut off) go back to pending, or to
-- dead when their attempts are spent, so a job that kills its relay every time ends (G2, G6).
-- Handler defaults for max_attempts come from the rescuing relay's registry (:type, :max),
-- then :default_max. Locked rows belong to a completion in progress and are skipped.
WITH expired AS (
    SELECT uuid
    FROM outbox_jobs
    WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
limits AS (
    SELECT * FROM unnest(CAST(:type AS text[]), CAST(:max AS integer[])) AS h (type, max_attempts)
),
rescued AS (
    UPDATE outbox_jobs AS j
    SET state = CASE
            WHEN j.attempt >= coalesce(
                j.max_attempts,
                (SELECT limits.max_attempts FROM limits WHERE limits.type = j.type),
                :default_max
            )
            THEN 'dead' ELSE 'pending' END,
        lease_expires_at = NULL,
        run_at = now(),
        last_error = 'lease expired on relay ' || j.relay
    FROM expired
    WHERE j.uuid = expired.uuid
    RETURNING j.uuid, j.type, j.queue, j.key, j.attempt, j.relay, j.state
)
INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay, reason)
SELECT uuid, e.event, type, queue, key, attempt, relay, 'lease expired'
FROM rescued
CROSS JOIN LATERAL (
    SELECT 'rescued' UNION ALL SELECT 'dead' WHERE rescued.state = 'dead'
) AS e (event)
RETURNING event;
