-- Credits: an append-only ledger, one row per movement.
--
--   grant    credits given to a tenant (job_id NULL)
--   reserve  held at enqueue, in the enqueue's transaction
--   charge   the reservation is spent: the job is done
--   release  the reservation is returned: the job failed or was cancelled
--
-- Amounts are positive; the movement gives the sign. A tenant's spendable
-- balance is grants - reserves + releases, which equals
-- grants - charges - open reservations (reserves with neither charge nor release).
-- (job_id, movement) is unique, so a job is reserved, charged or released at most once.

CREATE TABLE bq_credit_ledger (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    job_id      uuid REFERENCES bq_jobs (id) ON DELETE CASCADE,
    movement    text NOT NULL CHECK (movement IN ('grant', 'reserve', 'charge', 'release')),
    amount      bigint NOT NULL CHECK (amount >= 0),
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((movement = 'grant') = (job_id IS NULL))
);
CREATE UNIQUE INDEX bq_credit_ledger_job_movement ON bq_credit_ledger (job_id, movement)
    WHERE job_id IS NOT NULL;
CREATE INDEX bq_credit_ledger_tenant ON bq_credit_ledger (tenant_id);

CREATE FUNCTION bq_credit_balance(tenant text) RETURNS bigint
    LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(CASE movement WHEN 'grant' THEN amount WHEN 'release' THEN amount
                                      WHEN 'reserve' THEN -amount ELSE 0 END), 0)::bigint
    FROM bq_credit_ledger WHERE tenant_id = tenant
$$;

-- Settles a job's reservation in the same statement that makes the job final,
-- whichever statement that is (a worker finishing, a stop, the lease reaper):
-- no crash can fall between the status change and the ledger movement.
-- A job without a reservation (credits disabled when it was enqueued) is left alone;
-- a reservation is settled once: a charge and a release exclude each other.
CREATE FUNCTION bq_settle_credits() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    movement_ text := CASE WHEN NEW.status = 'done' THEN 'charge' ELSE 'release' END;
BEGIN
    INSERT INTO bq_credit_ledger (tenant_id, job_id, movement, amount)
    SELECT r.tenant_id, r.job_id, movement_, r.amount
    FROM bq_credit_ledger r
    WHERE r.job_id = NEW.id AND r.movement = 'reserve'
      AND NOT EXISTS (SELECT 1 FROM bq_credit_ledger s
                      WHERE s.job_id = NEW.id AND s.movement IN ('charge', 'release'))
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER bq_jobs_settle_credits
    AFTER UPDATE OF status ON bq_jobs
    FOR EACH ROW
    WHEN (NEW.status IN ('done', 'failed', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION bq_settle_credits();
