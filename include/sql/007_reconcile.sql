-- 007: key reconciliation. Idempotent, like every migration.
--
-- A reconciliation asks the MLS for only the keys and modification times of what the provider
-- should hold, lands them here (per run, like the raw records), and compares them with the store:
-- listings missing or stale (another timestamp) are fetched by key, listings the MLS no longer
-- has in scope are asked for by key and deleted when gone.
CREATE TABLE IF NOT EXISTS mls_reconcile_keys (
    provider_id         text        NOT NULL,
    sync_id             bigint      NOT NULL,          -- mls_sync_history.id of the run
    listing_key         text        NOT NULL,
    modified            timestamptz,                   -- the MLS's modification time, in UTC
    PRIMARY KEY (provider_id, sync_id, listing_key)
);

-- What the last reconciliation found and did, for the dashboard's drift figure and its alert.
ALTER TABLE mls_sync_status ADD COLUMN IF NOT EXISTS last_reconciled_at timestamptz;
ALTER TABLE mls_sync_status ADD COLUMN IF NOT EXISTS last_reconcile jsonb;
