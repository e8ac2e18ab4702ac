-- name: inbox_receive
-- Record that :consumer received :message_id, in the consumer's own transaction, so the record
-- commits or rolls back with the effects of applying the message. Returns a row only the first
-- time: the primary key (consumer, message_id) turns a second receipt into nothing, and a
-- concurrent one waits for the first transaction to end (then returns nothing if it committed,
-- or inserts if it rolled back), so exactly one of them applies the message. received_at is
-- the database's clock, which the prune compares with.
INSERT INTO outbox_inbox (consumer, message_id)
VALUES (:consumer, :message_id)
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING true;

-- name: prune_inbox
-- Receipts older than the inbox retention, a batch at a time (by outbox_inbox_received_idx).
-- A copy of a message that arrives after its receipt was pruned would be applied again: the
-- retention is never shorter than the idempotency retention (G5), and is meant to outlast any
-- redelivery (a re-publish after a crash, a broker's redelivery, a consumer rewound).
DELETE FROM outbox_inbox
WHERE (consumer, message_id) IN (
    SELECT consumer, message_id FROM outbox_inbox
    WHERE received_at < now() - CAST(:retention AS interval)
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
);
