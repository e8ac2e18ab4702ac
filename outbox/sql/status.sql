-- name: status_depth
-- Depth per queue and state, with the age of the oldest job that is ready now.
-- Reads outbox_jobs only, which holds live work, so it stays cheap however old the system is.
SELECT queue,
       count(*) FILTER (WHERE state = 'pending' AND run_at <= now()) AS ready,
       count(*) FILTER (WHERE state = 'pending' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'dead') AS dead,
       extract(epoch FROM now() - min(run_at) FILTER (
           WHERE state = 'pending' AND run_at <= now()
       )) AS oldest_ready_seconds
FROM outbox_jobs
GROUP BY queue
ORDER BY queue;

-- name: status_blocked_keys
-- Keys whose head job is dead: nothing behind it runs until an operator acts (G4).
SELECT j.queue, j.key, j.uuid, j.type,
       (SELECT count(*) FROM outbox_jobs w WHERE w.key = j.key AND w.id > j.id) AS waiting
FROM outbox_jobs AS j
WHERE j.state = 'dead'
  AND j.key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM outbox_jobs AS p WHERE p.key = j.key AND p.id < j.id)
ORDER BY j.queue, j.key
LIMIT :limit;

-- name: status_relays
-- Relays that announced themselves and whose heartbeat has not expired.
SELECT relay, host, pid, queues, concurrency, version, started_at, types,
       extract(epoch FROM now() - heartbeat_at) AS heartbeat_age_seconds
FROM outbox_relays
WHERE expires_at > now()
ORDER BY relay;

-- name: status_unrunnable
-- Ready jobs that no live relay can run, by queue and type: no relay alive takes their queue
-- with a handler for their type. Relays claim only the types they name (relay claim.sql), so
-- these wait, untouched, for a deploy (a producer shipped before its consumer) or a relay
-- started with that queue. Scheduled jobs are not waiting yet; running and dead ones are
-- counted elsewhere. While no relay is alive at all nothing is listed: every job waits then,
-- and the relays say so. The relays' rows are few: the anti-join costs one probe per type.
SELECT j.queue, j.type, count(*) AS jobs,
       extract(epoch FROM now() - min(j.run_at)) AS oldest_seconds
FROM outbox_jobs AS j
WHERE j.state = 'pending' AND j.run_at <= now()
  AND EXISTS (SELECT 1 FROM outbox_relays WHERE expires_at > now())
GROUP BY j.queue, j.type
HAVING NOT EXISTS (
    SELECT 1 FROM outbox_relays AS r
    WHERE r.expires_at > now() AND j.queue = ANY(r.queues) AND j.type = ANY(r.types)
)
ORDER BY j.queue, j.type;

-- name: status_throughput
-- What happened over the last minute, from history: ends of attempts by queue and outcome.
SELECT queue, event, count(*) AS jobs
FROM outbox_history
WHERE at > now() - interval '1 minute' AND event IN ('succeeded', 'retried', 'dead')
GROUP BY queue, event
ORDER BY queue, event;

-- name: status_schedules
-- Periodic schedules, from the rows relays keep (relay/sql/schedule.sql): each one's
-- declaration, last tick and its job, next tick, and how long that is past due (no relay that
-- declares the schedule runs). A row stays after its schedule leaves the code, and shows
-- here, ever more overdue, until an operator deletes it.
SELECT name, type, spec, timezone, queue, key, last_tick, last_job_uuid, relay, next_tick,
       greatest(0, coalesce(extract(epoch FROM now() - next_tick), 0)) AS overdue_seconds
FROM outbox_schedules
ORDER BY name;
