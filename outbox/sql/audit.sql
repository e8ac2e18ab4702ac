-- name: chain_lock
-- Appends to the seal chain (seals and prunes) take turns: each reads the chain's end and
-- links to it inside this lock, so the chain never forks.
SELECT pg_advisory_xact_lock(2829, 5);

-- name: chain_end
-- The newest seal of the chain, and where the sealed history ends (prunes do not move it).
SELECT (SELECT digest FROM outbox_seals ORDER BY id DESC LIMIT 1) AS digest,
       coalesce((SELECT xid_to FROM outbox_seals WHERE kind = 'seal'
                 ORDER BY xid_from DESC LIMIT 1), 0) AS sealed_to;

-- name: snapshot_xmin
-- Every transaction below this id has ended: its history rows can no longer appear or change.
-- The sealer asks before it writes, so its own transaction has no id yet.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint;

-- name: sealed_by
-- The seal that history is sealed up to: the chain's last link of kind seal.
SELECT id FROM outbox_seals WHERE kind = 'seal' ORDER BY xid_from DESC LIMIT 1;

-- name: verify_horizon
-- G7: no honest link reaches this transaction. A sealer ends its seal at its snapshot's xmin,
-- and a later snapshot's xmin is never lower, so a seal past this one's was forged. A standby's
-- xmin may lag the primary's for a moment: there, the snapshot's xmax (no link reaches a
-- transaction that had not started).
SELECT CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmax(s) ELSE pg_snapshot_xmin(s) END
       ::text::bigint
FROM pg_current_snapshot() AS s;

-- name: count_range
-- How many rows [:xid_from, :xid_to) holds (cheap: no hashing), to size a seal first.
SELECT count(*) FROM outbox_history WHERE xid >= :xid_from AND xid < :xid_to;

-- name: digest_range
-- The rows of [:xid_from, :xid_to) in canonical order (transaction id, then id): how many, the
-- first and last ids, the rows digest (the SHA-256 of each row's SHA-256 concatenated) and
-- each row's 8-byte hash prefix concatenated. Hashed here, so that a seal of 100,000 rows
-- sends the relay 0.8 MB of prefixes instead of 3.2 MB of hashes (6.4 MB as text) to cut up.
-- OFFSET 0 keeps the subquery whole: each row's canonical text is hashed once, not once for
-- each aggregate that reads it.
SELECT count(*) AS row_count,
       min(r.id) AS first_history_id,
       max(r.id) AS last_history_id,
       sha256(coalesce(string_agg(r.hash, ''::bytea ORDER BY r.xid, r.id), ''::bytea))
           AS rows_digest,
       coalesce(string_agg(substr(r.hash, 1, 8), ''::bytea ORDER BY r.xid, r.id), ''::bytea)
           AS row_hashes
FROM (SELECT h.id, h.xid, sha256(convert_to(outbox_history_canonical(h), 'UTF8')) AS hash
      FROM outbox_history AS h
      WHERE h.xid >= :xid_from AND h.xid < :xid_to
      OFFSET 0) AS r;

-- name: range_split
-- Where to end a seal so that it holds about :rows rows (a backlog is sealed in pieces).
SELECT xid FROM outbox_history
WHERE xid >= :xid_from AND xid < :xid_to
ORDER BY xid
OFFSET :rows LIMIT 1;

-- name: insert_seal
-- G7: the trigger outbox_seals_checked refuses a link that reaches past the snapshot, does not
-- continue the chain or does not match its digest, and any role but outbox_writer and the owner.
INSERT INTO outbox_seals (
    kind, xid_from, xid_to, row_count, first_history_id, last_history_id, rows_digest,
    row_hashes, previous_digest, digest, actor
) VALUES (
    :kind, :xid_from, :xid_to, :row_count, :first_history_id, :last_history_id, :rows_digest,
    :row_hashes, :previous_digest, :digest, :actor
)
RETURNING id, sealed_at;

-- name: seals
-- The chain in order, from :after_id on, a page at a time.
SELECT id, kind, xid_from, xid_to, row_count, first_history_id, last_history_id, rows_digest,
       row_hashes, previous_digest, digest, actor, sealed_at
FROM outbox_seals
WHERE id > :after_id
ORDER BY id
LIMIT :limit;

-- name: row_hashes
-- Each row of a range with its id, in canonical order: where a seal and its rows part ways.
SELECT h.id, substring(sha256(convert_to(outbox_history_canonical(h), 'UTF8')) FROM 1 FOR 8)
FROM outbox_history AS h
WHERE h.xid >= :xid_from AND h.xid < :xid_to
ORDER BY h.xid, h.id;

-- name: canonical_rows
-- The rows of a range exactly as they were hashed: what `outbox audit export` writes.
SELECT outbox_history_canonical(h)
FROM outbox_history AS h
WHERE h.xid >= :xid_from AND h.xid < :xid_to
ORDER BY h.xid, h.id;

-- name: seal_lag
-- Age of the oldest history row not yet sealed (0 when all are), for the seal-lag gauge.
SELECT coalesce(extract(epoch FROM now() - min(at)), 0)::float8
FROM outbox_history
WHERE xid >= coalesce((SELECT xid_to FROM outbox_seals WHERE kind = 'seal'
                       ORDER BY xid_from DESC LIMIT 1), 0);

-- name: trail
-- History for auditors, filtered by any of job, key, type, actor and a time range.
SELECT id, at, job_uuid, event, type, queue, key, attempt, relay, actor, reason,
       error ->> 'type' AS error_type, error ->> 'message' AS error_message, duration_ms, run_at,
       xid
FROM outbox_history
WHERE (CAST(:job AS uuid) IS NULL OR job_uuid = :job)
  AND (CAST(:key AS text) IS NULL OR key = :key)
  AND (CAST(:type AS text) IS NULL OR type = :type)
  AND (CAST(:actor AS text) IS NULL OR actor = :actor)
  AND (CAST(:since AS timestamptz) IS NULL OR at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR at < :until)
ORDER BY at, id
LIMIT :limit;

-- name: allow_prune
-- `outbox prune` only: the append-only trigger lets this transaction delete rows below :xid.
SELECT set_config('outbox.prune_below_xid', CAST(:xid AS text), true);

-- name: prune_rows
-- Whole sealed, exported ranges leave history; the prune seal that follows records it.
DELETE FROM outbox_history WHERE xid >= :xid_from AND xid < :xid_to;

-- name: prune_idempotency
-- Idempotency keys past their retention (G5 holds within the window only), a batch at a time.
DELETE FROM outbox_idempotency
WHERE idempotency_key IN (
    SELECT idempotency_key FROM outbox_idempotency
    WHERE expires_at < now()
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
);

-- name: redaction_state
-- Whether each of the redaction triggers :names is enabled (they are switched together).
SELECT tgname, tgenabled <> 'D' AS enabled FROM pg_trigger
WHERE tgrelid IN ('outbox_jobs'::regclass, 'outbox_history'::regclass)
  AND tgname = ANY(CAST(:names AS text[]));

-- name: prune_seals
-- The prunes of the chain: the seals whose rows they removed are chained by digest alone.
SELECT id, kind, xid_from, xid_to, row_count, first_history_id, last_history_id, rows_digest,
       row_hashes, previous_digest, digest, actor, sealed_at
FROM outbox_seals
WHERE kind = 'prune'
ORDER BY id;

-- name: latest_seal
-- The end of the chain, whose digest operators keep elsewhere.
SELECT id, kind, xid_from, xid_to, row_count, first_history_id, last_history_id, rows_digest,
       row_hashes, previous_digest, digest, actor, sealed_at
FROM outbox_seals
ORDER BY id DESC
LIMIT 1;
