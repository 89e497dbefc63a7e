-- 001: the properties store and the sync bookkeeping.
-- Idempotent: every statement may run again on a database that already has it.

CREATE TABLE IF NOT EXISTS properties (
    id                  bigserial PRIMARY KEY,
    provider_id         text        NOT NULL,
    listing_key         text        NOT NULL,
    mls_listing_id      text,
    status              text,           -- RESO StandardStatus
    mls_status          text,           -- the MLS's own status value
    price               numeric(14, 2),
    address             text,
    street_number       text,
    street_name         text,
    city                text,
    state               text,
    postal_code         text,
    property_type       text,
    bedrooms            integer,
    bathrooms           numeric(6, 2),
    square_feet         integer,
    year_built          integer,
    listed_date         date,
    interior_features   text[],
    appliances          text[],
    parking_features    text[],
    public_remarks      text,
    list_agent_name     text,
    list_agent_mls_id   text,
    list_office_name    text,
    list_office_mls_id  text,
    latitude            numeric(10, 6),
    longitude           numeric(10, 6),
    photos_count        integer,
    -- MLS clocks, kept apart from our own updated_at
    mls_modified_at     timestamptz,
    status_changed_at   timestamptz,
    photos_changed_at   timestamptz,
    -- change detection: md5 of the mapped MLS values; unchanged rows are never rewritten
    row_hash            text        NOT NULL,
    -- local edits live apart from MLS values: {column: {"value", "mls_value", "by", "at"}}
    local_edits         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    local_edited_by     text,
    local_edited_at     timestamptz,
    -- lifecycle
    is_active           boolean     NOT NULL DEFAULT true,   -- on the market (status in the active set)
    deleted_at          timestamptz,                          -- soft delete: gone from the MLS
    deleted_reason      text,
    archived_at         timestamptz,
    first_sync_id       bigint,
    last_sync_id        bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_properties_provider_listing UNIQUE (provider_id, listing_key)
);
CREATE INDEX IF NOT EXISTS idx_properties_mls_listing_id ON properties (mls_listing_id);
CREATE INDEX IF NOT EXISTS idx_properties_status_updated ON properties (status, updated_at);
CREATE INDEX IF NOT EXISTS idx_properties_provider_active ON properties (provider_id, is_active)
    WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_properties_provider_postal ON properties (provider_id, postal_code);
CREATE INDEX IF NOT EXISTS idx_properties_provider_city ON properties (provider_id, lower(city));
CREATE INDEX IF NOT EXISTS idx_properties_local_edits ON properties (provider_id)
    WHERE local_edits <> '{}'::jsonb;

CREATE TABLE IF NOT EXISTS property_media (
    id                  bigserial PRIMARY KEY,
    provider_id         text        NOT NULL,
    listing_key         text        NOT NULL,
    media_order         integer     NOT NULL,          -- 0 = primary photo
    source_id           text,                          -- RETS Object-ID / RESO MediaKey
    source_url          text,
    source_modified_at  timestamptz,
    content_hash        text,                          -- sha256 of the original bytes
    content_type        text,
    width               integer,
    height              integer,
    bytes               bigint,
    caption             text,
    variants            jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- {name: {fmt: {key, url, width, height, bytes}}}
    original_key        text,
    state               text        NOT NULL DEFAULT 'stored'
                        CHECK (state IN ('stored', 'removed')),
    removed_at          timestamptz,
    objects_deleted_at  timestamptz,
    sync_id             bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_property_media_current
    ON property_media (provider_id, listing_key, media_order) WHERE state = 'stored';
CREATE INDEX IF NOT EXISTS idx_property_media_listing ON property_media (provider_id, listing_key);
CREATE INDEX IF NOT EXISTS idx_property_media_removed ON property_media (removed_at)
    WHERE state = 'removed' AND objects_deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS property_status_history (
    id                  bigserial PRIMARY KEY,
    provider_id         text        NOT NULL,
    listing_key         text        NOT NULL,
    old_status          text,
    new_status          text,
    old_mls_status      text,
    new_mls_status      text,
    changed_at          timestamptz,                   -- the MLS's StatusChangeTimestamp when known
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    sync_id             bigint
);
CREATE INDEX IF NOT EXISTS idx_property_status_history_listing
    ON property_status_history (provider_id, listing_key, recorded_at);

CREATE TABLE IF NOT EXISTS property_conflicts (
    id                  bigserial PRIMARY KEY,
    provider_id         text        NOT NULL,
    listing_key         text        NOT NULL,
    kind                text        NOT NULL CHECK (kind IN ('deleted_in_mls', 'field_changed')),
    fields              jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- {column: {"local", "mls", "mls_before"}}
    policy              text        NOT NULL,
    state               text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    resolution          text,                          -- mls | local | per_field
    resolution_detail   jsonb,
    resolved_by         text,
    resolved_at         timestamptz,
    sync_id             bigint,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_property_conflicts_open ON property_conflicts (provider_id, state);
CREATE UNIQUE INDEX IF NOT EXISTS uq_property_conflicts_open
    ON property_conflicts (provider_id, listing_key, kind) WHERE state = 'open';

CREATE TABLE IF NOT EXISTS mls_sync_status (
    provider_id         text PRIMARY KEY,
    provider_name       text,
    protocol            text,
    state               text        NOT NULL DEFAULT 'idle'
                        CHECK (state IN ('idle', 'running', 'failed', 'disabled')),
    current_sync_id     bigint,
    current_stage       text,
    progress            jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- pages, records, photos while running
    watermark           timestamptz,                   -- newest MLS modification stored
    status_watermark    timestamptz,                   -- the status poll's own
    last_run_at         timestamptz,
    last_run_mode       text,
    last_success_at     timestamptz,
    last_failure_at     timestamptz,
    last_error          text,
    last_counts         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_duration_seconds double precision,
    error_count         integer     NOT NULL DEFAULT 0,  -- unresolved errors
    consecutive_failures integer    NOT NULL DEFAULT 0,
    last_stale_alert_at timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_mls_sync_status_provider ON mls_sync_status (provider_id);

CREATE TABLE IF NOT EXISTS mls_sync_history (
    id                  bigserial PRIMARY KEY,
    sync_id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    provider_id         text        NOT NULL,
    dag_id              text,
    dag_run_id          text,
    mode                text        NOT NULL,          -- full | incremental | partial | status
    trigger             text        NOT NULL DEFAULT 'scheduled',  -- scheduled | manual
    dry_run             boolean     NOT NULL DEFAULT false,
    conf                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state               text        NOT NULL DEFAULT 'running'
                        CHECK (state IN ('running', 'success', 'failed', 'cancelled')),
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    duration_seconds    double precision,
    stage_timings       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    watermark_before    timestamptz,
    watermark_after     timestamptz,
    fetch_cursor        jsonb,                         -- checkpoint: a retried fetch resumes here
    stage_state         jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- per-stage checkpoints (transform_after, ...)
    pages_fetched       integer     NOT NULL DEFAULT 0,
    records_fetched     integer     NOT NULL DEFAULT 0,
    added               integer     NOT NULL DEFAULT 0,
    updated             integer     NOT NULL DEFAULT 0,
    unchanged           integer     NOT NULL DEFAULT 0,
    deleted             integer     NOT NULL DEFAULT 0,
    status_changes      integer     NOT NULL DEFAULT 0,
    conflicted          integer     NOT NULL DEFAULT 0,
    failed              integer     NOT NULL DEFAULT 0,
    photos_added        integer     NOT NULL DEFAULT 0,
    photos_removed      integer     NOT NULL DEFAULT 0,
    photos_failed       integer     NOT NULL DEFAULT 0,
    photo_bytes         bigint      NOT NULL DEFAULT 0,
    requests            integer     NOT NULL DEFAULT 0,
    report              jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- dry-run preview, notes
    error_summary       text
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_mls_sync_history_sync_id ON mls_sync_history (sync_id);
CREATE UNIQUE INDEX IF NOT EXISTS uq_mls_sync_history_run ON mls_sync_history (provider_id, dag_id, dag_run_id);
CREATE INDEX IF NOT EXISTS idx_mls_sync_history_provider ON mls_sync_history (provider_id, started_at DESC);

CREATE TABLE IF NOT EXISTS mls_sync_errors (
    id                  bigserial PRIMARY KEY,
    provider_id         text        NOT NULL,
    sync_id             bigint,                        -- mls_sync_history.id of the last occurrence
    stage               text        NOT NULL,          -- fetch | transform | media | reconcile | ...
    category            text        NOT NULL CHECK (category IN ('network', 'auth', 'data', 'rate_limit')),
    ref                 text        NOT NULL DEFAULT '',  -- listing key, listing:order, or request
    message             text        NOT NULL,
    payload             jsonb,
    attempts            integer     NOT NULL DEFAULT 1,
    first_seen_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    next_retry_at       timestamptz,
    dead_letter         boolean     NOT NULL DEFAULT false,
    resolved_at         timestamptz,
    resolution          text                           -- succeeded | dismissed
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_mls_sync_errors_open
    ON mls_sync_errors (provider_id, stage, ref) WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_mls_sync_errors_retry
    ON mls_sync_errors (provider_id, stage, next_retry_at) WHERE resolved_at IS NULL AND NOT dead_letter;
CREATE INDEX IF NOT EXISTS idx_mls_sync_errors_recent ON mls_sync_errors (provider_id, last_seen_at DESC);

-- Raw landing: what the MLS sent, keyed by listing; fetch writes, transform_load reads.
CREATE TABLE IF NOT EXISTS mls_raw_records (
    provider_id         text        NOT NULL,
    listing_key         text        NOT NULL,
    sync_id             bigint      NOT NULL,
    payload             jsonb       NOT NULL,
    deleted             boolean     NOT NULL DEFAULT false,  -- the MLS flagged it removed (MlgCanView=false)
    fetched_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, listing_key)
);
CREATE INDEX IF NOT EXISTS idx_mls_raw_records_sync ON mls_raw_records (provider_id, sync_id);

-- Every status change, from any writer (sync, status poll, local edit), lands in the history.
CREATE OR REPLACE FUNCTION mls_record_status_change() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status OR NEW.mls_status IS DISTINCT FROM OLD.mls_status THEN
        INSERT INTO property_status_history
            (provider_id, listing_key, old_status, new_status, old_mls_status, new_mls_status,
             changed_at, sync_id)
        VALUES (NEW.provider_id, NEW.listing_key, OLD.status, NEW.status, OLD.mls_status,
                NEW.mls_status, COALESCE(NEW.status_changed_at, now()), NEW.last_sync_id);
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS trg_properties_status_history ON properties;
CREATE TRIGGER trg_properties_status_history
    AFTER UPDATE OF status, mls_status ON properties
    FOR EACH ROW EXECUTE FUNCTION mls_record_status_change();
