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
-- Each queue's scan starts past its floor (:floor_priority, :floor_run_at, :floor_id, aligned
-- with :queues): the position of the last job this relay claimed there, while a long snapshot
-- keeps the index entries of jobs claimed since from being removed and every claim would walk
-- them all (relay/floors.py). Otherwise the floor is the lowest position, before every job.
-- The attempt limit is settled here, the one place it is decided: the job's own max_attempts,
-- else its handler's (:types, :limits from this relay's registry), else :default_max. The claim
-- stores it on the row, so every later attempt, relay and rescue (rescue.sql) reads the same
-- number, whichever version of the registry they run.
-- A job's idempotency key comes back as the enqueuer's, else the job's uuid as text (G3: the
-- same on every attempt); made here, as str() of each uuid in the relay cost more.
WITH limits AS (
    SELECT * FROM unnest(CAST(:types AS text[]), CAST(:limits AS integer[])) AS l (type, most)
),
candidates AS (
    SELECT c.tid, c.priority, c.run_at, c.id
    FROM unnest(
        CAST(:queues AS text[]), CAST(:rooms AS integer[]), CAST(:floor_priority AS smallint[]),
        CAST(:floor_run_at AS timestamptz[]), CAST(:floor_id AS bigint[])
    ) AS q (queue, room, priority, run_at, id)
    CROSS JOIN LATERAL (
        SELECT ready.* FROM (
            SELECT j.ctid AS tid, j.priority, j.run_at, j.id
            FROM outbox_jobs AS j
            WHERE j.state = 'pending'
              AND j.queue = q.queue
              AND (j.priority, j.run_at, j.id) > (q.priority, q.run_at, q.id)
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
              j.max_attempts, j.enqueued_at, j.priority, j.run_at, j.id
),
recorded AS (
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay)
    SELECT uuid, 'claimed', type, queue, key, attempt, :relay FROM claimed
)
SELECT uuid, type, queue, key, coalesce(idempotency_key, uuid::text) AS idempotency_key, payload,
       attempt, max_attempts, enqueued_at, priority, run_at, id
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
              j.max_attempts, j.enqueued_at, j.priority, j.run_at, j.id
),
recorded AS (
    INSERT INTO outbox_history (job_uuid, event, type, queue, key, attempt, relay, reason)
    SELECT uuid, 'claimed', type, queue, key, attempt, :relay, 'runs alone' FROM claimed
)
SELECT uuid, type, queue, key, coalesce(idempotency_key, uuid::text) AS idempotency_key, payload,
       attempt, max_attempts, enqueued_at, priority, run_at, id
FROM claimed;

-- name: next_run_at
-- How many seconds until the next scheduled job of :queues becomes ready, so an idle relay
-- sleeps until then. Measured on the database's clock, the one run_at is written by: a relay
-- whose own clock is off still wakes on time. Called when the last claim found nothing
-- ready (or less than it asked for). Only of :types: a job this relay cannot claim must not
-- wake it.
-- Read through outbox_jobs_ready_idx (queue, priority, run_at, id), one short range per
-- priority in use: `heads` steps from each queue's first pending job to the next priority
-- (a few index probes each), and each (queue, priority) gives its first job due after now
-- in run_at order. A plain min(run_at) over the queues read every scheduled job (a
-- sequential scan: 14 ms with 50,000 of them, at every sleep of an idle relay).
-- While claims start past floors (relay/floors.py), each queue is read from its floor on,
-- not through the entries of the jobs claimed before it, which a long transaction keeps; a
-- scheduled job more urgent than the floor's is found, once due, by ready_behind. Otherwise
-- each floor is the lowest position, before every job.
-- :since is how many seconds ago the relay's last claim began: a scheduled job (run_at after
-- its enqueued_at: a delay, a run_at, a retry's backoff) that fell due after that claim
-- looked, before this query, is counted too (the answer is then below zero, and the relay
-- claims again at once); one due before it was there for that claim to take. A job enqueued
-- to run at once (run_at = enqueued_at) is not: its NOTIFY wakes an idle relay, and while a
-- claim cannot take it (its key busy, its queue at its limit) it would count at every turn.
WITH RECURSIVE floors AS (
    SELECT * FROM unnest(
        CAST(:queues AS text[]), CAST(:floor_priority AS smallint[]),
        CAST(:floor_run_at AS timestamptz[]), CAST(:floor_id AS bigint[])
    ) AS q (queue, priority, run_at, id)
),
heads AS (
    SELECT f.queue, f.priority AS floor_priority, f.run_at AS floor_run_at, f.id AS floor_id,
           (SELECT j.priority FROM outbox_jobs AS j
            WHERE j.state = 'pending' AND j.queue = f.queue
              AND (j.priority, j.run_at, j.id) > (f.priority, f.run_at, f.id)
            ORDER BY j.priority, j.run_at, j.id
            LIMIT 1) AS priority
    FROM floors AS f
  UNION ALL
    SELECT h.queue, h.floor_priority, h.floor_run_at, h.floor_id,
           (SELECT min(j.priority) FROM outbox_jobs AS j
            WHERE j.state = 'pending' AND j.queue = h.queue AND j.priority > h.priority)
    FROM heads AS h
    WHERE h.priority IS NOT NULL
)
SELECT extract(epoch FROM min(n.run_at) - now())
FROM heads AS h
CROSS JOIN LATERAL (
    SELECT j.run_at FROM outbox_jobs AS j
    WHERE j.state = 'pending' AND j.queue = h.queue AND j.priority = h.priority
      AND (j.priority, j.run_at, j.id) > (h.floor_priority, h.floor_run_at, h.floor_id)
      AND j.run_at > now() - make_interval(secs => CAST(:since AS double precision))
      AND (j.run_at > now() OR j.run_at > j.enqueued_at)
      AND j.type = ANY(CAST(:types AS text[]))
    ORDER BY j.run_at
    LIMIT 1
) AS n
WHERE h.priority IS NOT NULL;

-- name: ready_head
-- How many index entries of jobs already claimed lie before the first ready job of each of
-- :queues in outbox_jobs_ready_idx (relay/floors.py). Run under EXPLAIN ANALYZE as an index
-- only scan (the caller turns the other scans off for its transaction): an entry no scan has
-- yet marked dead costs a heap fetch, and one a long snapshot may still see cannot be marked,
-- so "Heap Fetches" counts them. Without locks, without the claim's other conditions.
EXPLAIN (ANALYZE, FORMAT JSON)
SELECT h.id
FROM unnest(CAST(:queues AS text[])) AS q (queue)
CROSS JOIN LATERAL (
    SELECT j.id FROM outbox_jobs AS j
    WHERE j.state = 'pending' AND j.queue = q.queue AND j.run_at <= now()
    ORDER BY j.priority, j.run_at, j.id
    LIMIT 1
) AS h;

-- name: ready_behind
-- Whether a job claim_batch would take is ready behind the floor of its queue (at or before
-- the floor's position), where claims that start past the floors do not look
-- (relay/floors.py). Read without locks; it walks the entries the floors skip.
SELECT EXISTS (
    SELECT 1
    FROM unnest(
        CAST(:queues AS text[]), CAST(:floor_priority AS smallint[]),
        CAST(:floor_run_at AS timestamptz[]), CAST(:floor_id AS bigint[])
    ) AS q (queue, priority, run_at, id)
    CROSS JOIN LATERAL (
        SELECT 1 FROM outbox_jobs AS j
        WHERE j.state = 'pending'
          AND j.queue = q.queue
          AND (j.priority, j.run_at, j.id) <= (q.priority, q.run_at, q.id)
          AND j.run_at <= now()
          AND NOT j.isolated
          AND array_position(CAST(:types AS text[]), j.type) IS NOT NULL
          AND (
              j.key IS NULL
              OR NOT EXISTS (SELECT 1 FROM outbox_jobs AS p WHERE p.key = j.key AND p.id < j.id)
          )
        LIMIT 1
    ) AS ready
);

-- name: index_only
-- For ready_head: no other scan than an index only one, in this transaction alone.
SELECT set_config('enable_indexscan', 'off', true), set_config('enable_bitmapscan', 'off', true),
       set_config('enable_seqscan', 'off', true);
