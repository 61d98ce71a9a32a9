-- What a token may do (DESIGN §12): 'tenant' (its tenant's work), 'admin' (every tenant's,
-- and the metrics), 'metrics' (GET /metrics and nothing else: for a Prometheus scraper,
-- which should not be able to stop anybody's work). is_admin stays as it was and
-- agrees with the scope (the CHECK), so older code reading it keeps meaning the same.
ALTER TABLE bq_tokens ADD COLUMN scope text;
UPDATE bq_tokens SET scope = CASE WHEN is_admin THEN 'admin' ELSE 'tenant' END;
ALTER TABLE bq_tokens ALTER COLUMN scope SET NOT NULL,
    ALTER COLUMN scope SET DEFAULT 'tenant',
    ADD CONSTRAINT bq_tokens_scope CHECK (scope IN ('tenant', 'admin', 'metrics') AND is_admin = (scope = 'admin'));

-- The console's recent failures and recent batches (GET /v1/metrics), newest first
-- without scanning every finished job or every tenant's batches.
CREATE INDEX bq_jobs_failed_recent ON bq_jobs (finished_at DESC) WHERE status = 'failed';
CREATE INDEX bq_batches_created ON bq_batches (created_at DESC);
