-- 002: what the media stage needs beyond 001. Idempotent, like every migration.

-- The photo folder of a row (`<prefix>/<provider>/<listing>/<order>-<hash16>/`): lets orphan
-- detection ask "does any row own this object?" by index, one listed chunk at a time, instead of
-- loading every key of the bucket or scanning jsonb.
ALTER TABLE property_media ADD COLUMN IF NOT EXISTS object_prefix text;
CREATE INDEX IF NOT EXISTS idx_property_media_object_prefix ON property_media (object_prefix);

-- Per listing, the MLS's photo clock (PhotosChangeTimestamp / PhotoModificationTimestamp, or
-- ModificationTimestamp when the provider has none) and photo count that the stored photos
-- reflect. Planning compares these with `properties` (same clock, no mixing with ours), so a
-- listing whose photos did not change is never downloaded again, even after a removal left no
-- stored row carrying the newer timestamp.
CREATE TABLE IF NOT EXISTS property_media_sync (
    provider_id         text        NOT NULL,
    listing_key         text        NOT NULL,
    photos_changed_at   timestamptz,
    photos_count        integer,
    photos_stored       integer     NOT NULL DEFAULT 0,
    synced_at           timestamptz NOT NULL DEFAULT now(),
    sync_id             bigint,
    PRIMARY KEY (provider_id, listing_key)
);
