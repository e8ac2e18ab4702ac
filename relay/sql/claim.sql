-- name: claim_batch
-- Claim up to :limit ready jobs from :queues and lease them to :relay, in one transaction of
-- its own that commits at once (G2: a claimed job always carries a lease the rescuer can expire).
-- Order: priority, then readiness, then enqueue order. Only the head of each key is claimable:
-- a job waits while any job of its key with a lower id is live (pending, running or dead), so
-- one key runs one job at a time in commit order (G4).
-- Each queue is read through outbox_jobs_ready_idx in claim order (a LATERAL per queue keeps
-- the scan ordered and index-driven whatever the statistics say), then the best :limit win.
-- A queue gives at most its :rooms entry (the same position as in :queues): with per-queue
-- limits, its free places in this relay process, so a slow queue never fills the process
-- (relay/queues.py); without, :limit for every queue. The room is an outer LIMIT, which
-- pulls (and so locks) no more rows than it; the inner LIMIT stays :limit, which the planner
-- can estimate. A LIMIT it cannot estimate, such as least(:limit, q.room), is priced at a
-- tenth of the queue: past jit_above_cost, each claim of 500 took 35 ms instead of 10.
-- The chosen rows, locked by this statement, are updated by their physical address (ctid): a
-- TID scan, never a join over the live table, whatever the planner thinks of its size.
-- Jobs marked `isolated` (they lost a lease beside others, see rescue.sql) are left to
-- claim_isolated. Every claim appends a `claimed` history row (G7).
-- Only types this relay has a handler for (:types) are claimed: in a rolling deploy a job
-- whose consumer is not deployed yet waits, untouched, for a relay that knows its type (G2),
-- instead of ending dead here. Such jobs at the head of a queue are read past, not claimed.
-- The test is written as array_position(...) IS NOT NULL, which the planner cannot estimate
-- and takes as true for nearly every row: `type = ANY(:types)` is estimated from column
-- statistics, which right after a burst of a new type call it rare, and the claim was then
-- costed at a million (an index read of every ready job, compiled by JIT) or planned as a
-- sequential scan and a sort of the whole table.
-- The attempt limit is settled here, the one place it is decided: the job's own max_attempts,
-- else its handler's (:types, :limits from this relay's registry), else :default_max. The claim
-- stores it on the row, so every later attempt, relay and rescue (rescue.sql) reads the same
-- number, whichever version of the registry they run.
WITH limits AS (
    SELECT * FROM unnest(CAST(:types AS text[]), CAST(:limits AS integer[])) AS l (type, most)
),
candidates AS (
    SELECT c.tid, c.priority, c.run_at, c.id
    FROM unnest(CAST(:queues AS text[]), CAST(:rooms AS integer[])) AS q (queue, room)
    CROSS JOIN LATERAL (
        SELECT ready.* FROM (
            SELECT j.ctid AS tid, j.priority, j.run_at, j.id
            FROM outbox_jobs AS j
            WHERE j.state = 'pending'
              AND j.queue = q.queue
              AND j.run_at <= now()
              AND NOT j.isolated
              AND array_position(CAST(:types AS text[]), j.type) IS NOT NULL
              AND (
                  j.key IS NULL
                  OR NOT EXISTS (
                      SELECT 1 FROM outbox_jobs AS p WHERE p.key = j.key AND p.id < j.id
                  )
              )
            ORDER BY j.priority, j.run_at, j.id
            LIMIT :limit
            FOR UPDATE OF j SKIP LOCKED
        ) AS ready
        LIMIT q.room
    ) AS c
),
chosen AS (
    SELECT tid FROM candidates ORDER BY priority, run_at, id LIMIT :limit
),
claimed AS (
    UPDATE outbox_jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        relay = :relay,
        claimed_at = now(),
        lease_expires_at = now() + CAST(:lease AS interval),
        max_attempts = coalesce(
            j.max_attempts,
            (SELECT limits.most FROM limits WHERE limits.type = j.type),
            :default_max
        )
    WHERE j.ctid = ANY(ARRAY(SELECT tid FROM chosen))
    RETURNING j.uuid, j.type, j.queue, j.key, j.idempotency_key, j.payload, j.attempt,
              j.max_attempts, j.enqueued_at, j.id
),
recorded AS (
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay)
    SELECT uuid, 'claimed', type, queue, key, attempt, :relay FROM claimed
)
SELECT uuid, type, queue, key, idempotency_key, payload, attempt, max_attempts, enqueued_at
FROM claimed
ORDER BY id;

-- name: isolated_ready
-- Whether a job that must run alone is ready in :queues (outbox_jobs_isolated_idx: no read of
-- the ready jobs), so a busy relay knows to make room for it. Only of :types, the ones it can
-- claim: room made for a job it cannot run would be made again every look, for nothing.
SELECT EXISTS (
    SELECT 1 FROM outbox_jobs
    WHERE state = 'pending' AND isolated AND queue = ANY(CAST(:queues AS text[]))
      AND run_at <= now() AND type = ANY(CAST(:types AS text[]))
);

-- name: claim_isolated
-- Claim one job that must run alone (G6: it lost a lease beside others, and a crash while it
-- runs alone is its own). The caller runs nothing else in its process meanwhile. Otherwise as
-- claim_batch: only :types, the head of its key only (G4), a lease, the attempt limit
-- settled, a `claimed` history row (G7).
WITH limits AS (
    SELECT * FROM unnest(CAST(:types AS text[]), CAST(:limits AS integer[])) AS l (type, most)
),
chosen AS (
    SELECT j.ctid AS tid
    FROM outbox_jobs AS j
    WHERE j.state = 'pending'
      AND j.isolated
      AND j.queue = ANY(CAST(:queues AS text[]))
      AND j.run_at <= now()
      AND j.type = ANY(CAST(:types AS text[]))
      AND (
          j.key IS NULL
          OR NOT EXISTS (SELECT 1 FROM outbox_jobs AS p WHERE p.key = j.key AND p.id < j.id)
      )
    ORDER BY j.priority, j.run_at, j.id
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
),
claimed AS (
    UPDATE outbox_jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        relay = :relay,
        claimed_at = now(),
        lease_expires_at = now() + CAST(:lease AS interval),
        max_attempts = coalesce(
            j.max_attempts,
            (SELECT limits.most FROM limits WHERE limits.type = j.type),
            :default_max
        )
    WHERE j.ctid = ANY(ARRAY(SELECT tid FROM chosen))
    RETURNING j.uuid, j.type, j.queue, j.key, j.idempotency_key, j.payload, j.attempt,
              j.max_attempts, j.enqueued_at
),
recorded AS (
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay, reason)
    SELECT uuid, 'claimed', type, queue, key, attempt, :relay, 'runs alone' FROM claimed
)
SELECT uuid, type, queue, key, idempotency_key, payload, attempt, max_attempts, enqueued_at
FROM claimed;

-- name: next_run_at
-- How many seconds until the next scheduled job of :queues becomes ready, so an idle relay
-- sleeps until then. Measured on the database's clock, the one run_at is written by: a relay
-- whose own clock is off still wakes on time. Called only when nothing is ready, so the
-- pending rows it reads are the scheduled ones. Only of :types: a job this relay cannot
-- claim must not wake it.
SELECT extract(epoch FROM min(run_at) - now())
FROM outbox_jobs
WHERE state = 'pending' AND queue = ANY(CAST(:queues AS text[])) AND run_at > now()
  AND type = ANY(CAST(:types AS text[]));

