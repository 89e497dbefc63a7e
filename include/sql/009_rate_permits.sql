-- 009: a provider's request budget, kept where every task of it can see it. Idempotent.
--
-- MLS budgets (MLS Grid: 2 requests/s, 7,200/h, 40,000/day, 4 GB/h of media) count every
-- request of an account, whichever worker, task or run sent it. Each request takes a permit
-- here first (a row per request; a row with requests = 0 counts downloaded bytes), under a
-- per-provider advisory lock, so the sliding windows hold across processes and hosts and across
-- a task's restart. Rows older than a day are of no window any more and are deleted as it goes.
CREATE TABLE IF NOT EXISTS mls_rate_permits (
    id           bigserial   PRIMARY KEY,
    provider_id  text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    requests     smallint    NOT NULL DEFAULT 1,
    bytes        bigint      NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS mls_rate_permits_provider_at ON mls_rate_permits (provider_id, at);
