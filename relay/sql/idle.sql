-- name: idle_enter
-- An idle relay's mark, taken on a connection of its own (relay/idle.py): IDLE (2829, 6)
-- shared, held by the session until the relay is busy again; while any relay holds it, enqueue
-- sends NOTIFY (relay_idle in outbox/sql/enqueue.sql). NULL: not taken (an enqueue is trying
-- it this instant). Then GATE (2829, 7) exclusively, for this statement only: waited for
-- until every transaction that looked for an idle relay before IDLE was taken has ended
-- (their jobs are committed, or gone, and the next claim finds them); true then. The wait is
-- short (the connection's lock_timeout: an error, IDLE held all the same), and enqueues never
-- queue behind it: they only try GATE, and while a relay waits for it they notify.
SELECT CASE WHEN pg_try_advisory_lock_shared(2829, 6)
            THEN pg_advisory_xact_lock(2829, 7) IS NOT NULL END;

-- name: idle_gate
-- GATE tried again, IDLE already held, without waiting: true once those transactions have
-- ended.
SELECT pg_try_advisory_xact_lock(2829, 7);

-- name: idle_leave
-- The relay is busy: enqueue need not wake it.
SELECT pg_advisory_unlock_shared(2829, 6);

-- name: idle_holders
-- The sessions holding IDLE exclusively in this database (none should, but for an instant).
SELECT l.pid, a.application_name
FROM pg_locks AS l
LEFT JOIN pg_stat_activity AS a USING (pid)
WHERE l.locktype = 'advisory' AND l.classid = 2829 AND l.objid = 6 AND l.objsubid = 2
  AND l.mode = 'ExclusiveLock' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
