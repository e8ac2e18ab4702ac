-- name: schedule_rows
-- The rows of the schedules this relay declares (absent ones as NULLs), with the database's
-- clock: every relay decides what is due by the same clock, however wrong its own is.
SELECT d.name, s.type, s.spec, s.timezone, s.queue, s.key, s.payload, s.last_tick, s.next_tick,
       s.name IS NOT NULL AS stored, clock_timestamp() AS now
FROM unnest(CAST(:names AS text[])) AS d (name)
LEFT JOIN outbox_schedules AS s ON s.name = d.name
ORDER BY d.name;

-- name: schedule_declare
-- Write a schedule's declaration. A new row starts at its next tick, never in the past. A
-- changed cron, interval or timezone moves next_tick to the new declaration's next tick;
-- last_tick stays, so no tick at or before it is ever enqueued again. An unchanged row is
-- not written.
INSERT INTO outbox_schedules AS s (name, type, spec, timezone, queue, key, payload, next_tick)
VALUES (:name, :type, :spec, :timezone, :queue, :key, CAST(:payload AS jsonb), :next_tick)
ON CONFLICT (name) DO UPDATE SET
    type = excluded.type,
    spec = excluded.spec,
    timezone = excluded.timezone,
    queue = excluded.queue,
    key = excluded.key,
    payload = excluded.payload,
    next_tick = CASE
        WHEN s.next_tick IS NULL OR (s.spec, s.timezone) <> (excluded.spec, excluded.timezone)
        THEN excluded.next_tick ELSE s.next_tick END,
    updated_at = now()
WHERE (s.type, s.spec, s.timezone, s.queue, s.key, s.payload, s.next_tick IS NULL)
      IS DISTINCT FROM
      (excluded.type, excluded.spec, excluded.timezone, excluded.queue, excluded.key,
       excluded.payload, false);

-- name: schedule_tick
-- Take the due ticks of a schedule: the first statement of the transaction that enqueues
-- their jobs. Exactly once however many relays run: the tick's identity is in this row. Two
-- relays that read the same state both try this update; the second waits for the first's row
-- lock, then finds next_tick moved on and last_tick at or past :tick, updates nothing, and
-- enqueues nothing. The row is also unchanged when its declaration changed meanwhile (spec
-- and timezone are what the ticks were computed from). :tick is the latest tick enqueued, or
-- NULL when the catch-up policy left out every due tick (only next_tick moves then).
UPDATE outbox_schedules
SET last_tick = coalesce(CAST(:tick AS timestamptz), last_tick),
    next_tick = :next_tick,
    relay = :relay,
    updated_at = now()
WHERE name = :name
  AND next_tick = :due_from
  AND spec = :spec
  AND timezone = :timezone
  AND (last_tick IS NULL OR CAST(:tick AS timestamptz) IS NULL
       OR last_tick < CAST(:tick AS timestamptz))
RETURNING name;

-- name: schedule_record_job
-- The job of the latest tick, in the same transaction, for status and the audit trail.
UPDATE outbox_schedules SET last_job_uuid = :uuid WHERE name = :name;
