-- relay_idle, the condition each statement below sends its NOTIFY under (evaluated once per
-- statement), with the advisory locks of outbox/locks.py:
--   an idle relay holds IDLE (2829, 6) shared on a connection of its own (relay/idle.py), so
--   trying IDLE exclusively fails while any relay is idle: then notify. Before that look, the
--   statement takes GATE (2829, 7) shared until its transaction ends. A relay that has just
--   taken IDLE takes GATE exclusively (waiting 5 ms at most, then waiting for the transactions
--   that held it then to end), and claims once more only after that, when every transaction
--   that looked before it took IDLE has ended: the claim finds their jobs, and every later
--   statement notifies. GATE not to be had (a relay waits for it): notify.
-- Trying IDLE exclusively and releasing it in one expression leaves no lock behind, even
-- behind a transaction-pooling PgBouncer. Neither lock is ever waited for here.

-- name: enqueue
-- Insert a batch of jobs in one round trip, inside the caller's transaction, so they commit or
-- roll back with the domain writes (G1).
-- G7: each job's `enqueued` history row is appended by the trigger outbox_jobs_enqueued, in this
--     statement, from the inserted rows: the application's role (outbox_app) may insert jobs but
--     not write history, so it can neither skip that row nor word it differently.
-- G4: the distinct keys are locked (transaction-scoped advisory locks, in sorted order so two
--     batches cannot deadlock on each other) before any row takes its id: a later transaction
--     on the same key waits for the earlier to end, so ids within a key follow commit order.
-- G5: the first use of an idempotency key within its retention window inserts its record; a
--     later one finds it (waiting for an uncommitted first use to end) and inserts no job. The
--     upsert always returns the record, so the caller learns the existing job's uuid.
-- A delay counts from the database's clock (now()), not the application's.
-- One NOTIFY per queue (PostgreSQL folds identical notifications within a transaction), and
-- only while some relay is idle: a busy relay claims again without being told, and NOTIFY
-- makes every notifying transaction of the server commit one at a time. `relay_idle` below.
WITH input AS (
    SELECT *
    FROM ROWS FROM (
        unnest(CAST(:uuid AS uuid[])),
        unnest(CAST(:type AS text[])),
        unnest(CAST(:queue AS text[])),
        unnest(CAST(:key AS text[])),
        unnest(CAST(:idempotency_key AS text[])),
        jsonb_array_elements(CAST(:payload AS jsonb)),
        unnest(CAST(:priority AS smallint[])),
        unnest(CAST(:run_at AS timestamptz[])),
        unnest(CAST(:delay AS interval[])),
        unnest(CAST(:max_attempts AS integer[]))
    ) WITH ORDINALITY AS i (
        uuid, type, queue, key, idempotency_key, payload, priority, run_at, delay, max_attempts,
        ord
    )
),
key_locks AS (
    SELECT count(pg_advisory_xact_lock(CAST(:lock_class AS integer), hashtext(k.key))) AS taken
    FROM (SELECT DISTINCT key FROM input WHERE key IS NOT NULL ORDER BY key) AS k
),
first_use AS (
    SELECT DISTINCT ON (idempotency_key) idempotency_key, uuid
    FROM input
    WHERE idempotency_key IS NOT NULL
    ORDER BY idempotency_key, ord
),
remembered AS (
    INSERT INTO outbox_idempotency AS o (idempotency_key, job_uuid, expires_at)
    SELECT idempotency_key, uuid, now() + CAST(:retention AS interval) FROM first_use
    ON CONFLICT (idempotency_key) DO UPDATE SET
        job_uuid = CASE WHEN o.expires_at <= now() THEN excluded.job_uuid ELSE o.job_uuid END,
        created_at = CASE WHEN o.expires_at <= now() THEN now() ELSE o.created_at END,
        expires_at = CASE WHEN o.expires_at <= now() THEN excluded.expires_at ELSE o.expires_at END
    RETURNING idempotency_key, job_uuid
),
fresh AS (
    SELECT input.*
    FROM input
    CROSS JOIN key_locks
    LEFT JOIN remembered USING (idempotency_key)
    WHERE input.idempotency_key IS NULL OR remembered.job_uuid = input.uuid
),
inserted AS (
    -- no RETURNING: outbox_app may insert these columns, and read none of them
    INSERT INTO outbox_jobs (
        uuid, type, queue, key, idempotency_key, payload, priority, run_at, max_attempts
    )
    SELECT uuid, type, queue, key, idempotency_key, payload, priority,
           coalesce(run_at, now() + delay, now()), max_attempts
    FROM fresh
    ORDER BY ord
),
woken AS (
    SELECT count(pg_notify('outbox_jobs', q.queue)) AS sent
    FROM (SELECT DISTINCT queue FROM fresh) AS q
    WHERE (SELECT CASE WHEN NOT pg_try_advisory_xact_lock_shared(2829, 7) THEN true
                       WHEN pg_try_advisory_lock(2829, 6) THEN NOT pg_advisory_unlock(2829, 6)
                       ELSE true END)  -- relay_idle
)
-- Rows for duplicates only, with the existing job's uuid. `woken` is the preserved side of the
-- join so that its notification is sent even when no duplicate comes back.
SELECT dup.ord, dup.job_uuid
FROM woken
LEFT JOIN (
    SELECT input.ord, remembered.job_uuid
    FROM input
    JOIN remembered USING (idempotency_key)
    WHERE remembered.job_uuid <> input.uuid
) AS dup ON true;

-- name: enqueue_one
-- The common case of `enqueue` in a statement of its own: one job without an idempotency key.
-- The same row as `enqueue` writes, with less for the server to plan and run (half the time
-- the batch form takes for one job: `python -m bench.overhead`).
-- G4: a key's advisory lock is taken in the subquery the inserted row is read from, so before
--     the row takes its id (pg_advisory_xact_lock is strict: no key, no lock).
-- G7: the trigger outbox_jobs_enqueued appends the `enqueued` history row, as for `enqueue`.
-- One row comes back, of no duplicate (the shape of `enqueue`'s rows), once NOTIFY is sent
-- (while a relay is idle, as for `enqueue`).
WITH inserted AS (
    INSERT INTO outbox_jobs (
        uuid, type, queue, key, payload, priority, run_at, max_attempts
    )
    SELECT CAST(:uuid AS uuid), CAST(:type AS text), CAST(:queue AS text),
           CAST(:key AS text), CAST(:payload AS jsonb), CAST(:priority AS smallint),
           coalesce(CAST(:run_at AS timestamptz), now() + CAST(:delay AS interval), now()),
           CAST(:max_attempts AS integer)
    FROM (
        SELECT count(pg_advisory_xact_lock(CAST(:lock_class AS integer), hashtext(:key)))
    ) AS key_lock
)
SELECT CAST(NULL AS bigint) AS ord, CAST(NULL AS uuid) AS job_uuid
FROM (
    SELECT CASE WHEN CASE WHEN NOT pg_try_advisory_xact_lock_shared(2829, 7) THEN true
                          WHEN pg_try_advisory_lock(2829, 6) THEN NOT pg_advisory_unlock(2829, 6)
                          ELSE true END  -- relay_idle
                THEN pg_notify('outbox_jobs', :queue)::text END
) AS woken;

-- name: enqueue_bulk_prepare
-- The first of two steps of a large enqueue_many, whose rows then arrive by COPY.
-- G4: lock the batch's distinct keys, sorted, before COPY gives any row its id.
-- G5: record the idempotency keys; rows come back for duplicates only (the index into the
--     :idempotency_key array and the existing job's uuid), plus one row with now(), which
--     stands for the whole transaction and so dates delays and enqueue times in the copy.
WITH key_locks AS (
    SELECT count(pg_advisory_xact_lock(CAST(:lock_class AS integer), hashtext(k.key))) AS taken
    FROM (SELECT DISTINCT key FROM unnest(CAST(:key AS text[])) AS u (key) ORDER BY key) AS k
),
input AS (
    SELECT *
    FROM unnest(CAST(:idempotency_key AS text[]), CAST(:uuid AS uuid[]))
        WITH ORDINALITY AS i (idempotency_key, uuid, ord)
),
first_use AS (
    SELECT DISTINCT ON (idempotency_key) idempotency_key, uuid
    FROM input
    ORDER BY idempotency_key, ord
),
remembered AS (
    INSERT INTO outbox_idempotency AS o (idempotency_key, job_uuid, expires_at)
    SELECT idempotency_key, uuid, now() + CAST(:retention AS interval) FROM first_use
    ON CONFLICT (idempotency_key) DO UPDATE SET
        job_uuid = CASE WHEN o.expires_at <= now() THEN excluded.job_uuid ELSE o.job_uuid END,
        created_at = CASE WHEN o.expires_at <= now() THEN now() ELSE o.created_at END,
        expires_at = CASE WHEN o.expires_at <= now() THEN excluded.expires_at ELSE o.expires_at END
    RETURNING idempotency_key, job_uuid
),
woken AS (
    SELECT count(pg_notify('outbox_jobs', q.queue)) AS sent
    FROM unnest(CAST(:queues AS text[])) AS q (queue)
    WHERE (SELECT CASE WHEN NOT pg_try_advisory_xact_lock_shared(2829, 7) THEN true
                       WHEN pg_try_advisory_lock(2829, 6) THEN NOT pg_advisory_unlock(2829, 6)
                       ELSE true END)  -- relay_idle
)
SELECT now(), (SELECT taken FROM key_locks), (SELECT sent FROM woken), dup.ord, dup.job_uuid
FROM (SELECT 1) AS one
LEFT JOIN (
    SELECT input.ord, remembered.job_uuid
    FROM input
    JOIN remembered USING (idempotency_key)
    WHERE remembered.job_uuid <> input.uuid
) AS dup ON true;

-- name: enqueue_bulk_copy_jobs
-- Step two: the fresh jobs, in batch order, so that ids follow it (binary COPY, heap multi-insert).
-- G7: the trigger outbox_jobs_enqueued appends their `enqueued` history rows, once the COPY ends.
COPY outbox_jobs (uuid, type, queue, key, idempotency_key, payload, priority, run_at, max_attempts)
FROM STDIN (FORMAT BINARY);
