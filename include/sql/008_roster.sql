-- 008: the rest of the MLS: members (agents), offices and open houses. Idempotent, like every
-- migration.
--
-- Each resource a provider's YAML names (`resources:`) is synced into its own table, keyed by the
-- provider and the resource's key, with the typed columns an agent application reads, the MLS's
-- record as it came (raw), the hash of the mapped values (unchanged rows are never rewritten), the
-- MLS's modification time and a soft delete (a row gone from the MLS keeps its last values).
CREATE TABLE IF NOT EXISTS members (
    provider_id         text        NOT NULL,
    member_key          text        NOT NULL,          -- RESO MemberKey
    member_mls_id       text,                          -- the agent id listings carry (list_agent_mls_id)
    first_name          text,
    last_name           text,
    full_name           text,
    email               text,
    phone               text,
    status              text,                          -- MemberStatus (Active, Inactive)
    office_key          text,
    office_mls_id       text,
    mls_modified_at     timestamptz,
    raw                 jsonb       NOT NULL DEFAULT '{}'::jsonb,
    row_hash            text        NOT NULL,
    deleted_at          timestamptz,                   -- gone from the MLS
    first_sync_id       bigint,
    last_sync_id        bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, member_key)
);
CREATE INDEX IF NOT EXISTS idx_members_mls_id ON members (provider_id, member_mls_id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_members_office ON members (provider_id, office_key) WHERE deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS offices (
    provider_id         text        NOT NULL,
    office_key          text        NOT NULL,          -- RESO OfficeKey
    office_mls_id       text,                          -- the office id listings carry (list_office_mls_id)
    name                text,
    phone               text,
    email               text,
    address             text,
    city                text,
    state               text,
    postal_code         text,
    status              text,
    mls_modified_at     timestamptz,
    raw                 jsonb       NOT NULL DEFAULT '{}'::jsonb,
    row_hash            text        NOT NULL,
    deleted_at          timestamptz,
    first_sync_id       bigint,
    last_sync_id        bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, office_key)
);
CREATE INDEX IF NOT EXISTS idx_offices_mls_id ON offices (provider_id, office_mls_id) WHERE deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS open_houses (
    provider_id         text        NOT NULL,
    open_house_key      text        NOT NULL,          -- RESO OpenHouseKey
    open_house_id       text,
    listing_key         text,                          -- properties.listing_key of the same provider
    listing_id          text,
    date                date,
    start_at            timestamptz,
    end_at              timestamptz,
    status              text,                          -- OpenHouseStatus (Active, Cancelled, Ended)
    type                text,                          -- Public, Broker
    remarks             text,
    showing_agent_mls_id text,
    mls_modified_at     timestamptz,
    raw                 jsonb       NOT NULL DEFAULT '{}'::jsonb,
    row_hash            text        NOT NULL,
    deleted_at          timestamptz,
    first_sync_id       bigint,
    last_sync_id        bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, open_house_key)
);
CREATE INDEX IF NOT EXISTS idx_open_houses_listing ON open_houses (provider_id, listing_key) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_open_houses_upcoming ON open_houses (provider_id, start_at) WHERE deleted_at IS NULL;

-- One watermark per provider and resource (the listings keep theirs in mls_sync_status), and the
-- checkpoint of the run walking it now: a retried task resumes after the last page it committed.
CREATE TABLE IF NOT EXISTS mls_resource_sync (
    provider_id         text        NOT NULL,
    resource            text        NOT NULL,          -- member | office | open_house
    watermark           timestamptz,                   -- newest MLS modification stored
    last_reconciled_at  timestamptz,
    last_counts         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    run_sync_id         bigint,                        -- the run the checkpoint belongs to
    run_state           jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- cursor, max_modified, counts so far
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, resource)
);
