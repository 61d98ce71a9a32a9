-- Backlog counters (issue 14): an enqueue checks MAX_TENANT_BACKLOG and MAX_BACKLOG by
-- reading counters instead of count(*) over every live job under a per-tenant lock.
--
-- Live means scheduled, queued, dispatched or running. Two tables:
-- - bq_backlog_delta: triggers on bq_jobs append +n / -1 rows as jobs become live or stop
--   being live. Appending takes no lock on a shared row, so finishing workers never wait
--   for each other or for an enqueue, and no lock order can deadlock.
-- - bq_backlog: the folded counts per tenant, and the total under tenant_id '' (tenant ids
--   are 1-200 characters, so '' is no tenant). Only bq_backlog_admit writes it, under the
--   admission lock, folding the deltas in first.
--
-- Exactness: every admission of new jobs runs bq_backlog_admit, which takes one
-- transaction-scoped advisory lock, so admissions are serial; each then reads (with a
-- fresh snapshot, being a plpgsql statement) every committed admission and finish. A
-- finish not yet committed is still counted as live: the check can only err on the side
-- of refusing, never admit past a limit. The lock is held for one statement and its
-- commit on the common path (queries.sql enqueue_jobs), not across client round trips.

CREATE TABLE bq_backlog (
    tenant_id  text PRIMARY KEY,
    live       bigint NOT NULL DEFAULT 0
);

CREATE TABLE bq_backlog_delta (
    tenant_id  text NOT NULL,
    n          bigint NOT NULL
);

CREATE FUNCTION bq_is_live(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status IN ('scheduled', 'queued', 'dispatched', 'running')
$$;

INSERT INTO bq_backlog (tenant_id, live)
SELECT tenant_id, count(*) FROM bq_jobs WHERE bq_is_live(status) GROUP BY tenant_id;
INSERT INTO bq_backlog (tenant_id, live)
SELECT '', count(*) FROM bq_jobs WHERE bq_is_live(status);

-- Inserted jobs: one delta row per tenant per statement (a bulk enqueue of 10,000 adds one row).
CREATE FUNCTION bq_backlog_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bq_backlog_delta (tenant_id, n)
    SELECT tenant_id, count(*) FROM bq_backlog_new WHERE bq_is_live(status) GROUP BY tenant_id;
    RETURN NULL;
END $$;

CREATE TRIGGER bq_backlog_insert AFTER INSERT ON bq_jobs
    REFERENCING NEW TABLE AS bq_backlog_new
    FOR EACH STATEMENT EXECUTE FUNCTION bq_backlog_inserted();

-- A job that stops (or starts again) being live; the WHEN clause keeps the engine's
-- live-to-live updates (dispatch, claim, retry scheduling) free of any trigger call.
CREATE FUNCTION bq_backlog_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO bq_backlog_delta (tenant_id, n) VALUES (OLD.tenant_id, -1);
    ELSE
        INSERT INTO bq_backlog_delta (tenant_id, n)
        VALUES (NEW.tenant_id, CASE WHEN bq_is_live(NEW.status) THEN 1 ELSE -1 END);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER bq_backlog_update AFTER UPDATE OF status ON bq_jobs
    FOR EACH ROW WHEN (bq_is_live(OLD.status) IS DISTINCT FROM bq_is_live(NEW.status))
    EXECUTE FUNCTION bq_backlog_changed();

CREATE TRIGGER bq_backlog_delete AFTER DELETE ON bq_jobs
    FOR EACH ROW WHEN (bq_is_live(OLD.status))
    EXECUTE FUNCTION bq_backlog_changed();

-- TRUNCATE fires no row trigger: empty the counters with the jobs.
CREATE FUNCTION bq_backlog_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM bq_backlog_delta;
    UPDATE bq_backlog SET live = 0 WHERE live <> 0;
    RETURN NULL;
END $$;

CREATE TRIGGER bq_backlog_truncate AFTER TRUNCATE ON bq_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION bq_backlog_truncated();

-- Admission of a group of enqueue requests, in order: takes the lock, folds the deltas,
-- then for each request i (tenant p_tenants[i], p_adding[i] new jobs) says whether it fits
-- under both limits given the ones admitted before it, and the tenant's and the total
-- backlog it was checked against. The caller inserts the admitted requests' jobs in the
-- same statement (their trigger adds the deltas); the lock is held until its transaction
-- ends. One group per statement is how one commit (one WAL flush) carries many requests:
-- blogqueue.client batches concurrent enqueues of a process into one call.
CREATE FUNCTION bq_backlog_admit(p_tenants text[], p_adding bigint[], p_tenant_max bigint, p_max bigint)
RETURNS TABLE (req integer, tenant_live bigint, total_live bigint, admitted boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_live jsonb;
    v_total bigint;
    t bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('blogqueue.admit'));
    WITH d AS (DELETE FROM bq_backlog_delta RETURNING tenant_id, n),
         s AS (SELECT tenant_id, sum(n) AS n FROM d GROUP BY tenant_id)
    INSERT INTO bq_backlog AS b (tenant_id, live)
    SELECT tenant_id, n FROM s
    UNION ALL SELECT '', sum(n) FROM s HAVING count(*) > 0
    ON CONFLICT (tenant_id) DO UPDATE SET live = b.live + excluded.live;
    SELECT coalesce(jsonb_object_agg(b.tenant_id, b.live), '{}') INTO v_live
    FROM bq_backlog b WHERE b.tenant_id = ANY(p_tenants);
    v_total := coalesce((SELECT b.live FROM bq_backlog b WHERE b.tenant_id = ''), 0);
    FOR i IN 1 .. coalesce(array_length(p_tenants, 1), 0) LOOP
        req := i;
        t := coalesce((v_live ->> p_tenants[i])::bigint, 0);
        tenant_live := t;
        total_live := v_total;
        admitted := p_adding[i] = 0 OR (t + p_adding[i] <= p_tenant_max AND v_total + p_adding[i] <= p_max);
        IF admitted THEN
            v_live := jsonb_set(v_live, ARRAY[p_tenants[i]], to_jsonb(t + p_adding[i]));
            v_total := v_total + p_adding[i];
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
