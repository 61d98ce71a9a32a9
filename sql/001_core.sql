-- Core engine: batches, jobs, stage checkpoints, events, workers.
--
-- Internal job states (the API shows users a smaller set, see blogqueue/jobs.py):
--   scheduled   waiting for run_at (a future run_at, or a retry's backoff)
--   queued      ready; the dispatcher may hand it to arq
--   dispatched  handed to arq as "<id>:<attempt>", lease_until bounds the wait
--   running     claimed by a worker (worker_id), lease renewed by heartbeats
--   done | failed | cancelled   final

CREATE TABLE bq_batches (
    id          uuid PRIMARY KEY,
    tenant_id   text NOT NULL,
    job_count   integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bq_batches_tenant ON bq_batches (tenant_id, created_at DESC);

CREATE TABLE bq_jobs (
    id               uuid PRIMARY KEY,
    seq              bigserial UNIQUE,
    tenant_id        text NOT NULL,
    user_id          text,
    batch_id         uuid NOT NULL REFERENCES bq_batches (id),
    kind             text NOT NULL,
    spec             jsonb NOT NULL,
    model            text,
    priority         integer NOT NULL DEFAULT 0,
    idempotency_key  text,
    request_hash     text NOT NULL,
    status           text NOT NULL CHECK (status IN
                       ('scheduled', 'queued', 'dispatched', 'running', 'done', 'failed', 'cancelled')),
    stage            text,
    attempt          integer NOT NULL DEFAULT 0,
    failures         integer NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    worker_id        text,
    cancel_requested boolean NOT NULL DEFAULT false,
    last_error       text,
    error_code       text,
    result           jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

-- The dispatcher's scan: per tenant, best first (priority, fewer attempts, oldest).
CREATE INDEX bq_jobs_ready ON bq_jobs (tenant_id, priority DESC, attempt, created_at, id)
    WHERE status = 'queued';
-- Promotion of scheduled work whose time has come.
CREATE INDEX bq_jobs_scheduled ON bq_jobs (run_at) WHERE status = 'scheduled';
-- In-flight counts per tenant and the lease reaper.
CREATE INDEX bq_jobs_inflight ON bq_jobs (tenant_id, lease_until)
    WHERE status IN ('dispatched', 'running');
CREATE INDEX bq_jobs_worker ON bq_jobs (worker_id) WHERE status = 'running';
-- Listing, newest first, and batch views.
CREATE INDEX bq_jobs_tenant_seq ON bq_jobs (tenant_id, seq DESC);
CREATE INDEX bq_jobs_batch ON bq_jobs (batch_id, status);
-- Backlog counts for backpressure.
CREATE INDEX bq_jobs_backlog ON bq_jobs (tenant_id)
    WHERE status IN ('scheduled', 'queued', 'dispatched', 'running');
-- Throughput over the last minutes.
CREATE INDEX bq_jobs_finished ON bq_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX bq_jobs_idempotency ON bq_jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One row per finished stage: a retry resumes at the first stage without a row.
CREATE TABLE bq_job_stages (
    job_id      uuid NOT NULL REFERENCES bq_jobs (id) ON DELETE CASCADE,
    stage       text NOT NULL,
    attempt     integer NOT NULL,
    output      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, stage)
);

-- The progress log users read with a job.
CREATE TABLE bq_job_events (
    id       bigserial PRIMARY KEY,
    job_id   uuid NOT NULL REFERENCES bq_jobs (id) ON DELETE CASCADE,
    attempt  integer NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    event    text NOT NULL,
    detail   jsonb
);
CREATE INDEX bq_job_events_job ON bq_job_events (job_id, id);

-- Tenants may be weighted for the dispatcher's round robin; absent means weight 1.
CREATE TABLE bq_tenants (
    tenant_id  text PRIMARY KEY,
    weight     integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000)
);

CREATE TABLE bq_workers (
    id            text PRIMARY KEY,
    queue_name    text NOT NULL,
    hostname      text NOT NULL,
    pid           integer NOT NULL,
    concurrency   integer NOT NULL,
    prefetch      integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    in_flight     integer NOT NULL DEFAULT 0,
    jobs_done     bigint NOT NULL DEFAULT 0,
    jobs_failed   bigint NOT NULL DEFAULT 0,
    is_leader     boolean NOT NULL DEFAULT false,
    stopped_at    timestamptz
);

-- What users see: dispatch is an internal step, and work waiting after a
-- failure is "retrying".
CREATE FUNCTION bq_public_status(status text, failures integer) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN status IN ('scheduled', 'queued', 'dispatched') AND failures > 0 THEN 'retrying'
        WHEN status IN ('scheduled', 'queued', 'dispatched') THEN 'queued'
        ELSE status
    END
$$;
