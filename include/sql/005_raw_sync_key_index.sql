-- 005: a run's raw records are read in key order (transform_load, resumable by key). Idempotent.
--
-- With listing_key in the run index, that read is an ordered range scan of the index. On
-- (provider_id, sync_id) alone PostgreSQL sorted every payload of the run first: 7 MB at 10,000
-- listings, already an external sort on disk with the default work_mem, 14 ms before the first row.
CREATE INDEX IF NOT EXISTS idx_mls_raw_records_sync_key ON mls_raw_records (provider_id, sync_id, listing_key);
DROP INDEX IF EXISTS idx_mls_raw_records_sync;
