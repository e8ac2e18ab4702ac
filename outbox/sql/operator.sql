-- name: job_by_uuid
-- A live job by uuid (it is gone once it succeeded or was cancelled: see its history).
SELECT uuid, type, queue, key, idempotency_key, state, priority, attempt, max_attempts,
       run_at, enqueued_at, claimed_at, lease_expires_at, relay, last_error, payload
FROM outbox_jobs
WHERE uuid = :uuid;

-- name: history_of_job
-- Every transition of one job, oldest first (G7).
SELECT id, event, type, queue, key, attempt, at, relay, actor, reason, run_at, duration_ms,
       error
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

-- name: list_jobs
-- Live jobs matching an operator's filters (each one left NULL matches every job), in id
-- order after :after and at most :limit of them (NULL: all): keyset pages, never OFFSET and
-- never a count over the table. A pending job whose run_at is still to come shows as
-- scheduled, as `outbox status` counts it. `jobs retry` and `jobs cancel` act on the uuids
-- this returned, never on jobs that arrived after it (what the operator confirmed).
SELECT id, uuid, state, type, queue, key, priority, attempt, max_attempts, run_at,
       enqueued_at, relay, lease_expires_at, last_error
FROM (
    SELECT id, uuid,
           CASE WHEN state = 'pending' AND run_at > now() THEN 'scheduled' ELSE state END
               AS state,
           type, queue, key, priority, attempt, max_attempts, run_at, enqueued_at, relay,
           lease_expires_at, last_error
    FROM outbox_jobs
    WHERE id > :after
      AND (CAST(:queue AS text) IS NULL OR queue = :queue)
      AND (CAST(:type AS text) IS NULL OR type = :type)
      AND (CAST(:key AS text) IS NULL OR key = :key)
      AND (CAST(:since AS timestamptz) IS NULL OR enqueued_at >= :since)
) AS live
WHERE CAST(:states AS text[]) IS NULL OR state = ANY(CAST(:states AS text[]))
ORDER BY id
LIMIT :limit;
