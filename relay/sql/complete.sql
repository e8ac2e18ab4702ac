-- name: fence
-- First statement of every completion transaction (G3): lock the jobs still leased to :relay
-- at the attempt it ran. Jobs missing from the result were rescued and may be running
-- elsewhere: this relay must not complete them, and their handlers' writes must not commit.
-- The row locks hold the fence until commit: the rescuer skips locked rows.
-- Each job is found by its primary key; "running" is "holds a lease" (see complete_batch).
SELECT j.uuid
FROM outbox_jobs AS j
JOIN unnest(CAST(:uuid AS uuid[]), CAST(:attempt AS integer[])) AS f (uuid, attempt)
    ON f.uuid = j.uuid
WHERE j.uuid = ANY(CAST(:uuid AS uuid[]))
  AND j.relay = :relay AND j.attempt = f.attempt AND j.lease_expires_at IS NOT NULL
FOR UPDATE OF j;

-- name: complete_batch
-- A whole batch of outcomes, fenced and recorded in ONE statement: for handlers without a
-- session it is the whole completion (one round trip, its own transaction); handlers with a
-- session have their jobs locked by `fence` first and this ends their transaction. Each
-- DELETE or UPDATE matches a job only
-- while it is still leased to :relay at the attempt that ran (G3); a job rescued meanwhile
-- matches nothing and is reported lost by its absence. Jobs are found by primary key
-- (`= ANY`), and "running" is written as "holds a lease" (the table's CHECK makes the two the
-- same), so no plan can scan the running jobs through outbox_jobs_lease_idx. A row changed
-- concurrently (a heartbeat) is re-read and its lease re-checked before it is changed.
-- Succeeded jobs leave the live table; failed ones go back to pending after :retry_in seconds
-- or to dead (G6); postponed ones (the handler raised RetryLater) go back to pending after the
-- delay asked, their attempt given back, unless they asked too often; every outcome appends
-- its history rows (G7). A keyed job's successor becomes its key's head: wake the relays of
-- its queue (G4). Returns each job written, and whether it was a postponement refused.
WITH deleted AS (
    -- No join with `done`: estimates from stale statistics turned one into a nested loop
    -- over the whole batch for each job. Each job's attempt and duration are looked up in
    -- the arrays by position instead.
    DELETE FROM outbox_jobs AS j
    WHERE j.uuid = ANY(CAST(:done_uuid AS uuid[]))
      AND j.relay = :relay AND j.lease_expires_at IS NOT NULL
      AND j.attempt = (CAST(:done_attempt AS integer[]))[
          array_position(CAST(:done_uuid AS uuid[]), j.uuid)]
    RETURNING j.uuid, j.type, j.queue, j.key, j.attempt,
              (CAST(:done_ms AS double precision[]))[
                  array_position(CAST(:done_uuid AS uuid[]), j.uuid)] AS duration_ms,
              (CAST(:done_reason AS text[]))[
                  array_position(CAST(:done_uuid AS uuid[]), j.uuid)] AS reason
),
updated AS (
    -- The same for failures, each paired with its outcome through the arrays unnested
    -- together (as `postponed` below is); found by primary key (`= ANY`), so the plan stays
    -- an index lookup per job.
    UPDATE outbox_jobs AS j
    SET state = CASE WHEN f.dead THEN 'dead' ELSE 'pending' END,
        run_at = CASE WHEN f.dead THEN j.run_at ELSE now() + make_interval(secs => f.retry_in) END,
        lease_expires_at = NULL,
        last_error = left(f.error ->> 'message', 2000)
    FROM unnest(CAST(:failed_uuid AS uuid[]), CAST(:failed_attempt AS integer[]),
                CAST(:dead AS boolean[]), CAST(:retry_in AS double precision[]),
                CAST(:error AS jsonb[]), CAST(:failed_ms AS double precision[]))
         AS f (uuid, attempt, dead, retry_in, error, duration_ms)
    WHERE j.uuid = ANY(CAST(:failed_uuid AS uuid[])) AND j.uuid = f.uuid
      AND j.relay = :relay AND j.lease_expires_at IS NOT NULL AND j.attempt = f.attempt
    RETURNING j.uuid, j.type, j.queue, j.key, j.attempt, j.run_at, f.error, f.dead,
              f.duration_ms
),
asked AS (
    -- Jobs whose handler raised RetryLater, each with the requests it made before: its
    -- `retried` rows whose reason begins with :later_prefix (outbox_history_job_idx), since
    -- an operator last revived it (a revived job starts afresh). Empty, and nearly free, when
    -- no handler asked.
    SELECT p.uuid, p.attempt, p.seconds, p.duration_ms, p.reason,
           (SELECT count(*) FROM outbox_history AS h
            WHERE h.job_uuid = p.uuid AND h.event = 'retried'
              AND starts_with(h.reason, :later_prefix)
              AND h.id > coalesce((SELECT max(r.id) FROM outbox_history AS r
                                   WHERE r.job_uuid = p.uuid AND r.event = 'revived'), 0)
           ) >= :later_limit AS refused
    FROM unnest(CAST(:later_uuid AS uuid[]), CAST(:later_attempt AS integer[]),
                CAST(:later_in AS double precision[]), CAST(:later_ms AS double precision[]),
                CAST(:later_reason AS text[])) AS p (uuid, attempt, seconds, duration_ms, reason)
),
postponed AS (
    -- Not done, not failed: back to pending, due :later_in seconds from now on the database's
    -- clock, the attempt given back (max_attempts counts failures, G6). A job that already
    -- asked :later_limit times ends dead instead, so it cannot loop for ever (G6). Fenced
    -- like the others: still leased to :relay at the attempt that ran (G3).
    UPDATE outbox_jobs AS j
    SET state = CASE WHEN a.refused THEN 'dead' ELSE 'pending' END,
        attempt = CASE WHEN a.refused THEN j.attempt ELSE j.attempt - 1 END,
        run_at = CASE WHEN a.refused THEN j.run_at
                      ELSE now() + make_interval(secs => a.seconds) END,
        lease_expires_at = NULL,
        last_error = CASE WHEN a.refused THEN CAST(:later_refused AS text) ELSE j.last_error END
    FROM asked AS a
    WHERE j.uuid = ANY(CAST(:later_uuid AS uuid[])) AND j.uuid = a.uuid
      AND j.relay = :relay AND j.lease_expires_at IS NOT NULL AND j.attempt = a.attempt
    RETURNING j.uuid, j.type, j.queue, j.key, a.attempt, j.run_at, a.duration_ms, a.reason,
              a.refused
),
recorded AS (
    INSERT INTO outbox_history (
        job_uuid, event, type, queue, key, attempt, relay, error, duration_ms, run_at, reason
    )
    -- A publish's delivery (the broker's answer) is the reason of its `succeeded` row.
    SELECT uuid, 'succeeded', type, queue, key, attempt, :relay, NULL, duration_ms, NULL, reason
    FROM deleted
    UNION ALL
    SELECT uuid, e.event, type, queue, key, attempt, :relay,
           CASE WHEN e.event = 'failed' THEN error END,
           CASE WHEN e.event = 'failed' THEN duration_ms END,
           CASE WHEN e.event = 'retried' THEN run_at END,
           NULL
    FROM updated
    CROSS JOIN LATERAL (
        VALUES ('failed'), (CASE WHEN updated.dead THEN 'dead' ELSE 'retried' END)
    ) AS e (event)
    UNION ALL
    -- A postponement: one `retried` row, its reason saying so and when it runs next; refused,
    -- a `failed` row with the reason as its error, then `dead`.
    SELECT uuid, e.event, type, queue, key, attempt, :relay,
           CASE WHEN e.event = 'failed' THEN jsonb_build_object(
               'type', 'outbox.RetryLater', 'message', CAST(:later_refused AS text),
               'traceback', NULL) END,
           CASE WHEN e.event <> 'dead' THEN duration_ms END,
           CASE WHEN e.event = 'retried' THEN run_at END,
           CASE WHEN e.event = 'retried' THEN reason END
    FROM postponed
    CROSS JOIN LATERAL (
        SELECT 'retried' WHERE NOT postponed.refused
        UNION ALL SELECT 'failed' WHERE postponed.refused
        UNION ALL SELECT 'dead' WHERE postponed.refused
    ) AS e (event)
),
woken AS (
    SELECT count(pg_notify('outbox_jobs', q.queue)) AS sent
    FROM (SELECT DISTINCT queue FROM deleted WHERE key IS NOT NULL) AS q
)
-- `woken` is the preserved side, so its notifications are sent even when nothing is owned.
SELECT owned.uuid, owned.refused
FROM woken
LEFT JOIN (
    SELECT uuid, false AS refused FROM deleted
    UNION ALL SELECT uuid, false FROM updated
    UNION ALL SELECT uuid, refused FROM postponed
) AS owned ON true;
