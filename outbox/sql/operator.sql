-- name: job_by_uuid
-- A live job by uuid (it is gone once it succeeded or was cancelled: see its history).
SELECT uuid, type, queue, key, idempotency_key, state, priority, attempt, max_attempts,
       run_at, enqueued_at, claimed_at, lease_expires_at, relay, last_error, payload
FROM outbox_jobs
WHERE uuid = :uuid;

-- name: history_of_job
-- Every transition of one job, oldest first (G7).
SELECT id, event, attempt, at, relay, actor, reason, run_at, duration_ms, error
FROM outbox_history
WHERE job_uuid = :uuid
ORDER BY id;

-- name: revive_dead
-- An operator gives dead jobs a fresh set of attempts; the revival is recorded with who did it
-- and why (G7). A revived key head unblocks its key (G4), so the relays are woken.
WITH chosen AS (
    SELECT uuid FROM outbox_jobs
    WHERE state = 'dead'
      AND (uuid = ANY(CAST(:uuid AS uuid[])) OR key = :key)
    FOR UPDATE
),
revived AS (
    UPDATE outbox_jobs AS j
    SET state = 'pending', attempt = 0, run_at = now(), lease_expires_at = NULL
    FROM chosen
    WHERE j.uuid = chosen.uuid
    RETURNING j.uuid, j.type, j.queue, j.key
),
recorded AS (
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, actor, reason)
    SELECT uuid, 'revived', type, queue, key, 0, :actor, :reason FROM revived
),
woken AS (
    SELECT count(pg_notify('outbox_jobs', q.queue)) AS sent
    FROM (SELECT DISTINCT queue FROM revived) AS q
)
SELECT revived.uuid FROM revived, woken;

-- name: cancel_jobs
-- An operator ends pending or dead jobs: they leave the live table and history records who
-- ended them and why (G2: a job ends explicitly). Running jobs are left to their relay.
WITH chosen AS (
    SELECT uuid FROM outbox_jobs
    WHERE state IN ('pending', 'dead')
      AND (uuid = ANY(CAST(:uuid AS uuid[])) OR key = :key)
    FOR UPDATE
),
cancelled AS (
    DELETE FROM outbox_jobs AS j
    USING chosen
    WHERE j.uuid = chosen.uuid
    RETURNING j.uuid, j.type, j.queue, j.key, j.attempt
),
recorded AS (
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, actor, reason)
    SELECT uuid, 'cancelled', type, queue, key, attempt, :actor, :reason FROM cancelled
),
woken AS (
    SELECT count(pg_notify('outbox_jobs', q.queue)) AS sent
    FROM (SELECT DISTINCT queue FROM cancelled WHERE key IS NOT NULL) AS q
)
SELECT cancelled.uuid FROM cancelled, woken;

-- name: states_of
-- Where the named jobs are now, to explain to an operator why an action skipped them.
SELECT uuid, state FROM outbox_jobs WHERE uuid = ANY(CAST(:uuid AS uuid[]));
