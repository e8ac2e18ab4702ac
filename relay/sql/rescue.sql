-- name: rescue_expired
-- Jobs whose lease expired (their relay died, hung, or was cut off) go back to pending, so no
-- committed job is lost (G2). Which of them is to blame is unknown when the relay ran several:
-- a job that ran beside others gets its attempt back and is marked `isolated`, so that from now
-- on it runs alone; a job that lost its lease while isolated ran alone, its attempt counts, and
-- once its attempts are spent it ends dead. A job that kills its relay every time therefore
-- ends after max_attempts runs of its own, and its neighbours are never charged for it (G6).
-- The attempt limit is the one the claim stored on the row (claim.sql), so a rescuer whose
-- registry differs (another version, mid-deploy) decides as the claiming relay would. A row
-- claimed before limits were stored has none: it goes back to pending, and its next claim
-- stores one. Locked rows belong to a completion in progress and are skipped.
WITH expired AS (
    SELECT uuid, isolated AS alone, attempt AS lost_attempt
    FROM outbox_jobs
    WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE outbox_jobs AS j
    SET state = CASE
            WHEN expired.alone AND j.attempt >= j.max_attempts THEN 'dead' ELSE 'pending' END,
        attempt = CASE WHEN expired.alone THEN j.attempt ELSE j.attempt - 1 END,
        isolated = true,
        lease_expires_at = NULL,
        run_at = now(),
        last_error = 'lease expired on relay ' || j.relay
    FROM expired
    WHERE j.uuid = expired.uuid
    RETURNING j.uuid, j.type, j.queue, j.key, expired.lost_attempt, j.relay, j.state,
              expired.alone
)
INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay, reason)
SELECT uuid, e.event, type, queue, key, lost_attempt, relay,
       CASE WHEN alone THEN 'lease expired while it ran alone: the attempt counts'
            ELSE 'lease expired beside other jobs: the attempt is given back and the job '
                 'runs alone from now on' END
FROM rescued
CROSS JOIN LATERAL (
    SELECT 'rescued' UNION ALL SELECT 'dead' WHERE rescued.state = 'dead'
) AS e (event)
RETURNING event;
