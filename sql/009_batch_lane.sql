-- The batch lane (DESIGN §11) and per-call replay (invariant 3 inside a stage).
--
-- A batch-lane job whose text call went to a provider batch is `parked`: it holds no
-- worker slot and no lease, users see it `running` at its stage. When the response is
-- stored the job is queued again and its stage replays the stored response.
ALTER TABLE bq_jobs DROP CONSTRAINT IF EXISTS bq_jobs_status_check;
ALTER TABLE bq_jobs ADD CONSTRAINT bq_jobs_status_check CHECK (status IN
    ('scheduled', 'queued', 'dispatched', 'running', 'parked', 'done', 'failed', 'cancelled'));
CREATE INDEX bq_jobs_parked ON bq_jobs (id) WHERE status = 'parked';

CREATE OR REPLACE FUNCTION bq_public_status(status text, failures integer) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN status IN ('scheduled', 'queued', 'dispatched') AND failures > 0 THEN 'retrying'
        WHEN status IN ('scheduled', 'queued', 'dispatched') THEN 'queued'
        WHEN status = 'parked' THEN 'running'
        ELSE status
    END
$$;

-- Every paid provider call's answer, by (job, stage, call number within the stage): a
-- stage that runs again (retry, lost worker, a parked job resumed) replays answers it
-- already paid for instead of calling again. `request_hash` guards against replaying an
-- answer to a different request. Written lazily (blogqueue/replay.py says when).
CREATE TABLE bq_call_responses (
    job_id        uuid NOT NULL REFERENCES bq_jobs (id) ON DELETE CASCADE,
    stage         text NOT NULL,
    call_no       integer NOT NULL,
    request_hash  text NOT NULL,
    lane          text NOT NULL DEFAULT 'now' CHECK (lane IN ('now', 'batch')),
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, stage, call_no)
);

-- One provider batch. The row is written (state `intent`) before anything is uploaded;
-- the provider's id is recorded after. A leader that finds an `intent` row it did not
-- finish asks the provider's batch list for one carrying this id in its metadata before
-- submitting anything again.
CREATE TABLE bq_provider_batches (
    id                 uuid PRIMARY KEY,
    provider           text NOT NULL,
    key_hash           text NOT NULL,
    model              text NOT NULL,
    state              text NOT NULL CHECK (state IN
                         ('intent', 'submitted', 'ended', 'expired', 'failed', 'cancelled')),
    provider_batch_id  text UNIQUE,
    request_count      integer NOT NULL,
    est_tokens         bigint NOT NULL DEFAULT 0,
    succeeded          integer NOT NULL DEFAULT 0,
    errored            integer NOT NULL DEFAULT 0,
    fell_back          integer NOT NULL DEFAULT 0,
    polls              integer NOT NULL DEFAULT 0,
    next_poll_at       timestamptz NOT NULL DEFAULT now(),
    cancel_sent        boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    submitted_at       timestamptz,
    ended_at           timestamptz
);
CREATE INDEX bq_provider_batches_open ON bq_provider_batches (next_poll_at)
    WHERE state IN ('intent', 'submitted');

-- One text call of a batch-lane job. `custom_id` ("bq-<id>") is what the provider
-- echoes back with the answer. States: pending (waiting for the collector), submitted
-- (in a provider batch), done (answer in bq_call_responses), error (the provider
-- refused this request; the stage raises it once), fallback (its batch expired, failed
-- or was cancelled: the call goes to the now-lane), cancelled (its job was stopped).
CREATE TABLE bq_batch_requests (
    id           bigserial PRIMARY KEY,
    custom_id    text GENERATED ALWAYS AS ('bq-' || id::text) STORED UNIQUE,
    job_id       uuid NOT NULL REFERENCES bq_jobs (id) ON DELETE CASCADE,
    stage        text NOT NULL,
    call_no      integer NOT NULL,
    provider     text NOT NULL,
    key_hash     text NOT NULL,
    model        text NOT NULL,
    request_hash text NOT NULL,
    body         jsonb NOT NULL,
    est_tokens   integer NOT NULL,
    state        text NOT NULL CHECK (state IN ('pending', 'submitted', 'done', 'error', 'fallback', 'cancelled')),
    batch_id     uuid REFERENCES bq_provider_batches (id),
    error        jsonb,
    prompt_tokens      integer,
    completion_tokens  integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    UNIQUE (job_id, stage, call_no)
);
CREATE INDEX bq_batch_requests_pending ON bq_batch_requests (provider, key_hash, model, id)
    WHERE state = 'pending';
CREATE INDEX bq_batch_requests_batch ON bq_batch_requests (batch_id);
