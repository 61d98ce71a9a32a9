-- AI settings per user: the preferred model and provider API keys.
-- A job without a user uses the tenant's settings, stored under user_id = ''.
-- Keys are AES-GCM ciphertexts (blogqueue/secrets.py); only their masked form is readable.

CREATE TABLE bq_ai_settings (
    tenant_id        text NOT NULL,
    user_id          text NOT NULL DEFAULT '',
    preferred_model  text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE bq_provider_keys (
    tenant_id   text NOT NULL,
    user_id     text NOT NULL DEFAULT '',
    provider    text NOT NULL,
    ciphertext  text NOT NULL,
    masked      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, provider)
);
