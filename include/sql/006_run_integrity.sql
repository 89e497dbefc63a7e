-- 006: one writing run per provider, and landed records that belong to their run. Idempotent,
-- like every migration, and safe on a database holding rows written by older code.

-- Landed records keyed by run. Keyed by (provider, listing), a second run of the same provider
-- (a CLI sync beside a DAG run, a dry run beside a real one) took over the rows the first run had
-- landed: the first then skipped them, reported success and moved its watermark past them.
-- Old rows already carry their sync_id, so they fit the new key as they are. The new key is the
-- (provider_id, sync_id, listing_key) index of 005, so that index goes: one index to maintain.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'mls_raw_records'::regclass
               AND contype = 'p' AND array_length(conkey, 1) = 2) THEN
        ALTER TABLE mls_raw_records DROP CONSTRAINT mls_raw_records_pkey;
        ALTER TABLE mls_raw_records ADD CONSTRAINT mls_raw_records_pkey
            PRIMARY KEY (provider_id, sync_id, listing_key);
    END IF;
END
$$;
DROP INDEX IF EXISTS idx_mls_raw_records_sync_key;

-- The lease: one row per run that is going (writer or dry run), heartbeat by every stage. At most
-- one writer per provider (the partial unique index); a row whose holder is gone (its process
-- dead on the same host, or no heartbeat for stale_after_seconds) is taken over by the next run,
-- which closes the abandoned run as failed.
CREATE TABLE IF NOT EXISTS mls_sync_leases (
    sync_id             bigint      PRIMARY KEY,       -- mls_sync_history.id of the holding run
    provider_id         text        NOT NULL,
    writer              boolean     NOT NULL,          -- false: a dry run, which holds no provider state
    holder              text        NOT NULL,          -- "DAG mls_sync__x" / "CLI mls-sync sync"
    run_label           text,                          -- the DAG run id or cli__<timestamp>
    host                text,                          -- where the last stage ran
    pid                 integer,                       -- its process (null between DAG tasks)
    process_bound       boolean     NOT NULL DEFAULT false,  -- the run dies with that process (CLI)
    stage               text,
    stale_after_seconds integer     NOT NULL,
    acquired_at         timestamptz NOT NULL DEFAULT now(),
    heartbeat_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_mls_sync_leases_writer ON mls_sync_leases (provider_id) WHERE writer;
CREATE INDEX IF NOT EXISTS idx_mls_sync_leases_provider ON mls_sync_leases (provider_id);

-- Run-level failures are recorded with their category, and a bad setting is its own kind.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'mls_sync_errors_category_check'
               AND position('config' in pg_get_constraintdef(oid)) = 0) THEN
        ALTER TABLE mls_sync_errors DROP CONSTRAINT mls_sync_errors_category_check;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'mls_sync_errors_category_check') THEN
        ALTER TABLE mls_sync_errors ADD CONSTRAINT mls_sync_errors_category_check
            CHECK (category IN ('network', 'auth', 'data', 'rate_limit', 'config'));
    END IF;
END
$$;

-- Photos a listing lists that never arrived (a GetObject reply cut off): counted apart, and also
-- among photos_failed, since each is an error row retried on a later run.
ALTER TABLE mls_sync_history ADD COLUMN IF NOT EXISTS photos_missing integer NOT NULL DEFAULT 0;
