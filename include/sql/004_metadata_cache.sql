-- 004: server metadata kept between runs. Idempotent, like every migration.
--
-- A RETS full sync needs the class's TABLE and LOOKUP_TYPE metadata (to put status codes in its
-- DMQL) and SYSTEM (the server's time zone). On a large MLS that is megabytes and seconds on
-- every run. Rows are keyed by the MetadataVersion/MetadataTimestamp the login reply announces,
-- so a server that changes its metadata is asked again; entries also expire after a day.
CREATE TABLE IF NOT EXISTS mls_metadata_cache (
    provider_id         text        NOT NULL,
    cache_key           text        NOT NULL,   -- resource|KIND:ID|version@timestamp
    body                json        NOT NULL,
    fetched_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, cache_key)
);
