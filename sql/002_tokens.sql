-- API tokens (HTTP service). Only a SHA-256 of the secret part is stored: the
-- token is shown once, at creation. A token is "bq_<id>_<secret>"; the id finds
-- the row, the secret's hash is compared in constant time.

CREATE TABLE bq_tokens (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL,
    user_id       text,
    is_admin      boolean NOT NULL DEFAULT false,
    secret_hash   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX bq_tokens_tenant ON bq_tokens (tenant_id, created_at);
