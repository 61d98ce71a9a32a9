-- The event stream (GET /v1/events, blogqueue.events) and batch retry (POST /v1/batches/{id}/retry).

-- What the stream shows with each event: the job's public status after it (bq_public_status) and
-- the stage it is about. Written by the statements that write the event; NULL in rows from before
-- this migration (the stream then shows the job's current status).
ALTER TABLE bq_job_events ADD COLUMN status text, ADD COLUMN stage text;

-- Event ids come from a sequence, and sequence values are handed out before commit: id 11 can
-- commit before id 10. The stream never skips a row that commits late (blogqueue/events.py),
-- and to prove that it needs one fact: a transaction holding an event id already had its
-- transaction id (xid) when it took it. An INSERT takes the id (a column default) before it
-- writes the row (which would assign the xid); this default assigns the xid first.
-- (One expression, so PostgreSQL inlines it: ~0.1 µs a row more than nextval alone, where a
-- two-statement function cost ~2 µs. CASE evaluates its condition first.)
CREATE FUNCTION bq_next_event_id() RETURNS bigint
    LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('bq_job_events_id_seq') END
$$;
ALTER TABLE bq_job_events ALTER COLUMN id SET DEFAULT bq_next_event_id();

-- Retry: a batch's failed jobs run again. `retries` counts those rounds; the credit ledger keys
-- its movements by (job, round, movement), so a retried job reserves again and that new
-- reservation is charged or released once, like the first.
ALTER TABLE bq_jobs ADD COLUMN retries integer NOT NULL DEFAULT 0;
ALTER TABLE bq_credit_ledger ADD COLUMN retry_round integer NOT NULL DEFAULT 0;
DROP INDEX bq_credit_ledger_job_movement;
CREATE UNIQUE INDEX bq_credit_ledger_job_round_movement ON bq_credit_ledger (job_id, retry_round, movement)
    WHERE job_id IS NOT NULL;

-- As in 004, for the job's current round only.
CREATE OR REPLACE FUNCTION bq_settle_credits() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    movement_ text := CASE WHEN NEW.status = 'done' THEN 'charge' ELSE 'release' END;
BEGIN
    INSERT INTO bq_credit_ledger (tenant_id, job_id, movement, amount, retry_round)
    SELECT r.tenant_id, r.job_id, movement_, r.amount, r.retry_round
    FROM bq_credit_ledger r
    WHERE r.job_id = NEW.id AND r.movement = 'reserve' AND r.retry_round = NEW.retries
      AND NOT EXISTS (SELECT 1 FROM bq_credit_ledger s
                      WHERE s.job_id = NEW.id AND s.retry_round = NEW.retries
                        AND s.movement IN ('charge', 'release'))
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
