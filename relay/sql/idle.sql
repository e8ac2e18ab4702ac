-- name: idle_enter
-- An idle relay's mark, taken on a connection of its own (relay/idle.py): IDLE (2829, 6)
-- shared, held by the session until the relay is busy again; while any relay holds it, enqueue
-- sends NOTIFY (relay_idle in outbox/sql/enqueue.sql). NULL: not taken (an enqueue is trying
-- it this instant). Then GATE (2829, 7) tried exclusively for this statement only: true when
-- no transaction that looked for an idle relay before IDLE was taken is still open (their
-- jobs are committed, or gone, and the next claim finds them), false while one is.
SELECT CASE WHEN pg_try_advisory_lock_shared(2829, 6)
            THEN pg_try_advisory_xact_lock(2829, 7) END;

-- name: idle_gate
-- GATE tried again, IDLE already held: true once those transactions have ended.
SELECT pg_try_advisory_xact_lock(2829, 7);

-- name: idle_leave
-- The relay is busy: enqueue need not wake it.
SELECT pg_advisory_unlock_shared(2829, 6);
