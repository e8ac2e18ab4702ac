-- name: console_activity
-- Ends of attempts per minute and outcome, from :since on, for the overview's charts, counting
-- only the rows of transactions from :after_xid on: the console keeps the counts of the
-- transactions before it (outbox/console/activity.py). `final` marks the rows of transactions
-- below this statement's snapshot xmin (`horizon`): those have ended, so no row of theirs can
-- still appear, however old its `at` (a row carries its transaction's start, and a session
-- handler's transaction lasts as long as the handler). The rest are asked for again next time.
-- Once the window is counted, outbox_history_xid_idx keeps this to the rows of transactions
-- still open at the last refresh (a transaction open long anywhere on the server holds the
-- horizon back, as it holds back sealing, and this reads what was written since it began);
-- the first time, the BRIN index on `at` keeps it to the last hour's blocks. A row with a
-- NULL minute carries the horizon alone: nothing new matched.
WITH snapshot AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon
)
SELECT s.horizon, c.minute, c.event, c.final, c.jobs
FROM snapshot AS s
LEFT JOIN LATERAL (
    SELECT date_trunc('minute', h.at) AS minute, h.event, h.xid < s.horizon AS final,
           count(*) AS jobs
    FROM outbox_history AS h
    WHERE h.at >= :since AND h.xid >= :after_xid
      AND h.event IN ('succeeded', 'retried', 'dead')
    GROUP BY 1, 2, 3
) AS c ON true;

-- name: console_count_jobs
-- How many live jobs match a filter, counted to at most :cap: a page says "more than" past
-- it rather than count a whole table (the planner's estimate is given then instead).
SELECT count(*) FROM (
    SELECT 1
    FROM outbox_jobs
    WHERE (CAST(:queue AS text) IS NULL OR queue = :queue)
      AND (CAST(:type AS text) IS NULL OR type = :type)
      AND (CAST(:key AS text) IS NULL OR key = :key)
      AND (CAST(:since AS timestamptz) IS NULL OR enqueued_at >= :since)
      AND (CAST(:states AS text[]) IS NULL OR
           CASE WHEN state = 'pending' AND run_at > now() THEN 'scheduled' ELSE state END
               = ANY(CAST(:states AS text[])))
    LIMIT :cap
) AS matched;

-- name: console_key_history
-- Every history row of one key, in the order it was written, a page at a time: what happened
-- to an aggregate's work (account 42's), live or ended. outbox_history_key_idx serves it.
SELECT id, job_uuid, event, type, queue, attempt, at, relay, actor, reason,
       error ->> 'type' AS error_type, error ->> 'message' AS error_message, duration_ms
FROM outbox_history
WHERE key = :key AND id > :after
ORDER BY id
LIMIT :limit;

-- name: console_key_live
-- The live jobs of one key in their order (G4: the first one is the head the rest wait for).
SELECT id, uuid, type, queue, attempt, max_attempts, run_at, enqueued_at, last_error,
       CASE WHEN state = 'pending' AND run_at > now() THEN 'scheduled' ELSE state END AS state
FROM outbox_jobs
WHERE key = :key
ORDER BY id
LIMIT :limit;

-- name: console_enqueued_payload
-- The payload a job was enqueued with, as history keeps it (its SHA-256 only, where payload
-- redaction is on), for a job that has left outbox_jobs.
SELECT payload, payload_sha256
FROM outbox_history
WHERE job_uuid = :uuid AND event = 'enqueued'
ORDER BY id
LIMIT 1;

-- name: console_seal_summary
-- The seal chain at a glance: how many links, and how many history rows they cover.
SELECT count(*) AS seals, coalesce(sum(row_count) FILTER (WHERE kind = 'seal'), 0) AS rows
FROM outbox_seals;

-- name: console_leaders
-- Which relay leads each chore that one relay does for all (outbox/locks.py: 2 gauges,
-- 3 sealer, 4 upkeep): the holder of its session lock, named by its connection's
-- application_name ("outbox relay <name>").
SELECT l.objid AS lock, a.application_name
FROM pg_locks AS l
JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 2829 AND l.objsubid = 2
  AND l.objid IN (2, 3, 4)
  -- advisory locks are per database: relays of other databases on this server lead there
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
