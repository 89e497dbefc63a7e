-- 003: raw payloads as json, not jsonb. Idempotent, like every migration.
--
-- Nothing queries inside a raw payload: fetch writes it whole and transform_load reads it whole.
-- json stores the text as sent after a syntax check, where jsonb parses every record into its
-- binary form on the way in and back out; on a full sync that was a quarter of the fetch stage.
DO $$
BEGIN
    IF (SELECT data_type FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'mls_raw_records'
          AND column_name = 'payload') = 'jsonb' THEN
        ALTER TABLE mls_raw_records ALTER COLUMN payload TYPE json USING payload::json;
    END IF;
END
$$;
