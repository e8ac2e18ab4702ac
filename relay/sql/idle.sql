-- name: idle_session
-- Settings of the idle mark's connection, sent as a statement (a pooler may drop startup
-- options): how long idle_enter waits for GATE, and no idle_session_timeout, since the
-- connection is idle for as long as the relay is (where the server has the setting at all).
SELECT set_config('lock_timeout', CAST(:gate_wait AS text), false),
       (SELECT set_config(name, '0', false) FROM pg_settings
        WHERE name = 'idle_session_timeout');

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

-- name: idle_gate_holders
-- After that wait ran out: the transactions holding GATE, IDLE being held. Those that looked
-- before it was taken are among them; later ones saw IDLE and notify. The relay waits for
-- these only: new enqueues keep taking GATE, and under steady traffic it is never free.
SELECT coalesce(array_agg(virtualtransaction), '{}')
FROM pg_locks
WHERE locktype = 'advisory' AND classid = 2829 AND objid = 7 AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- name: idle_gate_waited
-- True once none of those transactions is open any more (a transaction holds GATE until it
-- ends; virtual transaction ids are never reused while the server runs).
SELECT NOT EXISTS (
    SELECT FROM pg_locks
    WHERE locktype = 'advisory' AND classid = 2829 AND objid = 7 AND objsubid = 2 AND granted
      AND virtualtransaction = ANY(CAST(:waiting AS text[]))
);

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
