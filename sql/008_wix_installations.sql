-- Wix app mode (issue 18): which installation of the Wix app each tenant is.
-- A tenant is linked to one app instance (the app installed on one Wix site); an
-- instance belongs to at most one tenant, so a tenant cannot claim a site another
-- tenant already linked. The instance id is not a secret by itself (the app's
-- secret is needed to turn it into a token), but it is only shown to its tenant.

CREATE TABLE bq_wix_installations (
    tenant_id    text PRIMARY KEY,
    instance_id  text NOT NULL UNIQUE,
    source       text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'webhook')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
