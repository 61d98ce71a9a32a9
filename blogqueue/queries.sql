-- Every query the engine runs, by name. Python calls them through blogqueue.db.Q.
-- Statements that change a job's state say which state they expect in their
-- WHERE clause: the database, not Python, decides who wins a race.

-- name: lock_tenant_enqueue
-- Serialises one tenant's enqueues that carry idempotency keys or reserve credits, so a key
-- is resolved, and a balance read, only once (the backlog limits are bq_backlog_admit's).
SELECT pg_advisory_xact_lock(hashtext('blogqueue.enqueue'), hashtext($1));

-- name: backlog_tenants
-- Tenants with a backlog, for the estimated wait only (folded counts: may lag by the deltas).
SELECT count(*) FROM bq_backlog WHERE live > 0 AND tenant_id <> '';

-- name: finished_since
SELECT count(*) AS n FROM bq_jobs WHERE finished_at > now() - make_interval(secs => $1);

-- name: find_by_idempotency_keys
SELECT id, idempotency_key, request_hash, batch_id, bq_public_status(status, failures) AS status
FROM bq_jobs WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[]);

-- name: enqueue_jobs
-- A group of enqueue requests in one statement (one commit): admission of each against both
-- backlog limits in order (bq_backlog_admit, migration 013; $15 tenant limit, $16 global),
-- then, for the admitted ones only, their batches, jobs, 'enqueued' events and the
-- dispatcher's wake-up. Requests: $11 batch ids, $12 tenants, $13 users, $14 job counts;
-- jobs: one array per column ($1-$9; run_at NULL means now) and $10, the request of each.
-- The admission lock is held for this statement and its commit, never across a round trip.
-- Answers one JSON object: {"admit": [{req, tenant_live, total_live, admitted}], "statuses": {id: status}}.
WITH admit AS MATERIALIZED (
    SELECT * FROM bq_backlog_admit($12::text[], $14::bigint[], $15, $16)
), reqs AS (
    SELECT q.* FROM unnest($11::uuid[], $12::text[], $13::text[], $14::int[]) WITH ORDINALITY
        AS q(batch_id, tenant_id, user_id, n, req)
    JOIN admit a ON a.req = q.req AND a.admitted AND q.n > 0
), batch AS (
    INSERT INTO bq_batches (id, tenant_id, job_count) SELECT batch_id, tenant_id, n FROM reqs
), ins AS (
    INSERT INTO bq_jobs (id, tenant_id, user_id, batch_id, kind, spec, model, priority,
                         idempotency_key, request_hash, status, run_at, stage)
    SELECT r.id, q.tenant_id, q.user_id, q.batch_id, r.kind, r.spec, r.model, r.priority,
           r.idempotency_key, r.request_hash,
           CASE WHEN r.run_at > now() THEN 'scheduled' ELSE 'queued' END,
           coalesce(r.run_at, now()), r.stage
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[],
                $6::text[], $7::text[], $8::timestamptz[], $9::text[], $10::int[])
        AS r(id, kind, spec, model, priority, idempotency_key, request_hash, run_at, stage, req)
    JOIN reqs q ON q.req = r.req
    RETURNING id, status, failures, stage
), events AS (
    INSERT INTO bq_job_events (job_id, attempt, event, status, stage)
    SELECT id, 0, 'enqueued', bq_public_status(status, failures), stage FROM ins
), wake AS (
    SELECT pg_notify('blogqueue_dispatch', 'enqueue') WHERE EXISTS (SELECT 1 FROM reqs)
)
SELECT json_build_object(
    'admit', (SELECT json_agg(a ORDER BY a.req) FROM admit a),
    'statuses', (SELECT json_object_agg(id, bq_public_status(status, failures)) FROM ins),
    'woken', (SELECT count(*) FROM wake)) AS result;

-- name: notify_dispatcher
SELECT pg_notify('blogqueue_dispatch', $1);

-- name: get_job_detail
-- One round trip for a job view: the job, its first $3 events and its saved stages as JSON
-- arrays, and for a queued job whether a live worker ($4: heartbeat window) knows its kind.
SELECT j.*, bq_public_status(j.status, j.failures) AS public_status,
       (SELECT coalesce(json_agg(json_build_object('attempt', e.attempt, 'at', e.at, 'event', e.event,
                                                   'detail', e.detail) ORDER BY e.id), '[]')
        FROM (SELECT id, attempt, at, event, detail FROM bq_job_events
              WHERE job_id = j.id ORDER BY id LIMIT $3) e) AS events,
       (SELECT coalesce(json_agg(json_build_object('stage', s.stage, 'attempt', s.attempt,
                                                   'at', s.created_at) ORDER BY s.created_at), '[]')
        FROM bq_job_stages s WHERE s.job_id = j.id) AS stages,
       CASE WHEN j.status = 'queued' THEN EXISTS (
           SELECT 1 FROM bq_workers
           WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $4)
             AND j.kind = ANY(coalesce(kinds, ARRAY['blog_post', 'product_optimization'])))
       END AS kind_served
FROM bq_jobs j WHERE j.id = $1 AND ($2::text IS NULL OR j.tenant_id = $2);

-- name: list_jobs
-- $1 NULL lists every tenant (admin).
SELECT j.*, bq_public_status(j.status, j.failures) AS public_status
FROM bq_jobs j
WHERE ($1::text IS NULL OR j.tenant_id = $1)
  AND ($2::text IS NULL OR bq_public_status(j.status, j.failures) = $2)
  AND ($3::uuid IS NULL OR j.batch_id = $3)
  AND ($4::bigint IS NULL OR j.seq < $4)
ORDER BY j.seq DESC
LIMIT $5;

-- name: get_batch
SELECT id, tenant_id, job_count, created_at FROM bq_batches
WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2);

-- name: batch_counts
SELECT bq_public_status(status, failures) AS status, count(*) AS n
FROM bq_jobs WHERE batch_id = $1 GROUP BY 1;

-- name: batch_job_ids
SELECT id, bq_public_status(status, failures) AS status FROM bq_jobs
WHERE batch_id = $1 ORDER BY seq;

-- name: stoppable_job
SELECT id FROM bq_jobs
WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)
  AND status IN ('scheduled', 'queued', 'dispatched', 'running', 'parked');

-- name: stoppable_batch
SELECT id FROM bq_jobs
WHERE batch_id = $1 AND ($2::text IS NULL OR tenant_id = $2)
  AND status IN ('scheduled', 'queued', 'dispatched', 'running', 'parked');

-- name: stoppable_tenant
SELECT id FROM bq_jobs
WHERE tenant_id = $1 AND status IN ('scheduled', 'queued', 'dispatched', 'running', 'parked');

-- name: stop_jobs
-- Waiting work (and parked work: no worker holds it) is cancelled now; running work is flagged
-- and its worker told.
WITH target AS (
    SELECT id, status FROM bq_jobs
    WHERE id = ANY($1::uuid[]) AND status IN ('scheduled', 'queued', 'dispatched', 'running', 'parked')
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE bq_jobs j SET
        status = CASE WHEN t.status = 'running' THEN 'running' ELSE 'cancelled' END,
        cancel_requested = true,
        finished_at = CASE WHEN t.status = 'running' THEN NULL ELSE now() END,
        lease_until = CASE WHEN t.status = 'running' THEN j.lease_until END,
        last_error = CASE WHEN t.status = 'running' THEN j.last_error ELSE 'stopped by request' END,
        error_code = CASE WHEN t.status = 'running' THEN j.error_code ELSE 'cancelled' END,
        updated_at = now()
    FROM target t WHERE j.id = t.id
    RETURNING j.id, j.attempt, j.status, j.stage
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, status, stage)
    SELECT id, attempt, CASE WHEN status = 'running' THEN 'stop_requested' ELSE 'cancelled' END, status, stage
    FROM upd
)
SELECT id, status FROM upd;

-- name: notify_cancel
SELECT pg_notify('blogqueue_cancel', $1);

-- name: promote_scheduled
-- Fenced ($2 queue, $3 leadership epoch): see `leader_fence`. Every dispatch statement
-- starts with the same `lead` CTE, which locks the lease row FOR SHARE: a takeover
-- (an UPDATE of that row) waits for it, and once a takeover has committed the row
-- no longer matches the old epoch, so a stale leader's statement changes nothing.
WITH lead AS (
    SELECT 1 FROM bq_leader WHERE queue_name = $2 AND epoch = $3 AND lease_until > now() FOR SHARE
)
UPDATE bq_jobs SET status = 'queued', updated_at = now()
WHERE id IN (SELECT id FROM bq_jobs WHERE status = 'scheduled' AND run_at <= now()
             ORDER BY run_at LIMIT $1 FOR UPDATE SKIP LOCKED)
  AND status = 'scheduled' AND EXISTS (SELECT 1 FROM lead);

-- name: reap_leases
-- Work whose lease lapsed goes back to the queue. A dispatched attempt that never
-- started (Redis lost it) costs nothing; a running one whose worker vanished counts
-- as a failure, so a job that kills its worker every time ends failed.
-- Fenced by the leadership epoch ($3 queue, $4 epoch), like promote_scheduled.
WITH lead AS (
    SELECT 1 FROM bq_leader WHERE queue_name = $3 AND epoch = $4 AND lease_until > now() FOR SHARE
), lapsed AS (
    SELECT id FROM bq_jobs
    WHERE status IN ('dispatched', 'running') AND lease_until < now() AND EXISTS (SELECT 1 FROM lead)
    ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE bq_jobs j SET
        failures = j.failures + (j.status = 'running')::int,
        status = CASE
            WHEN j.cancel_requested THEN 'cancelled'
            WHEN j.status = 'running' AND j.failures + 1 >= $1 THEN 'failed'
            ELSE 'queued' END,
        last_error = CASE
            WHEN j.cancel_requested THEN 'stopped by request'
            WHEN j.status = 'running' THEN 'worker lost: the attempt''s lease expired before it finished'
            ELSE j.last_error END,
        error_code = CASE
            WHEN j.cancel_requested THEN 'cancelled'
            WHEN j.status = 'running' THEN 'worker_lost'
            ELSE j.error_code END,
        finished_at = CASE
            WHEN j.cancel_requested OR (j.status = 'running' AND j.failures + 1 >= $1) THEN now() END,
        lease_until = NULL, worker_id = NULL, updated_at = now()
    FROM lapsed l WHERE j.id = l.id
    RETURNING j.id, j.attempt, j.status, j.failures, j.stage
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT id, attempt, 'lease_expired', jsonb_build_object('now', status), bq_public_status(status, failures), stage
    FROM upd
)
SELECT id, attempt, status FROM upd;

-- name: dispatch_cycle
-- One dispatch cycle's choice and hand-out as one statement: one round trip and one commit
-- instead of a transaction of four (issue #14), read in one snapshot:
-- 1. capacity: free slots of queue $3's live workers (heartbeat within $4 s: concurrency
--    plus prefetch) minus the attempts dispatched or running; `waiting`: is work queued?
-- 2. the fair choice of at most that many queued jobs, weighted round robin as
--    water-filling: every candidate gets the in-flight count its tenant would reach by
--    taking it ("slot"); candidates are taken lowest slot/weight first, so each free slot
--    goes to the tenant furthest below its share. Candidates that would pass the
--    per-tenant cap $1 come after every one that would not: the cap binds only while
--    other tenants have work that can use the slot. Ties between tenants rotate with $2.
--    Only kinds some live worker of the queue knows are candidates: other kinds wait
--    for such a worker. Within a tenant: priority, then fewer attempts, then oldest.
-- 3. the hand-out: those still queued marked dispatched (attempt + 1, a lease of $5 s),
--    locked in id order like every multi-row writer (stop_jobs, claim_attempts), so they
--    cannot deadlock; fenced by the leadership epoch $6 like promote_scheduled: a stale
--    leader hands out nothing, so it pushes nothing to arq.
-- Always one row: `free`, `waiting` and the attempts handed out (empty arrays when none).
WITH RECURSIVE lead AS (
    SELECT 1 FROM bq_leader WHERE queue_name = $3 AND epoch = $6 AND lease_until > now() FOR SHARE
), cap AS (
    SELECT EXISTS (SELECT 1 FROM bq_jobs WHERE status = 'queued') AS waiting,
           (SELECT coalesce(sum(concurrency + prefetch), 0) FROM bq_workers
            WHERE queue_name = $3 AND stopped_at IS NULL
              AND heartbeat_at > now() - make_interval(secs => $4))::int
         - (SELECT count(*) FROM bq_jobs WHERE status IN ('dispatched', 'running'))::int AS free
), served AS (
    SELECT DISTINCT unnest(coalesce(kinds, ARRAY['blog_post', 'product_optimization'])) AS kind
    FROM bq_workers
    WHERE queue_name = $3 AND stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $4)
), tenants AS (
    (SELECT tenant_id FROM bq_jobs WHERE status = 'queued' AND (SELECT free FROM cap) > 0
     ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id FROM bq_jobs j
            WHERE j.status = 'queued' AND j.tenant_id > t.tenant_id
            ORDER BY j.tenant_id LIMIT 1)
    FROM tenants t WHERE t.tenant_id IS NOT NULL
), inflight AS (
    SELECT tenant_id, count(*) AS n FROM bq_jobs
    WHERE status IN ('dispatched', 'running') GROUP BY tenant_id
), candidates AS (
    SELECT c.id, t.tenant_id, coalesce(i.n, 0) + c.rn AS slot, coalesce(w.weight, 1) AS weight, c.rn
    FROM tenants t
    LEFT JOIN inflight i ON i.tenant_id = t.tenant_id
    LEFT JOIN bq_tenants w ON w.tenant_id = t.tenant_id
    CROSS JOIN LATERAL (
        SELECT j.id, row_number() OVER (ORDER BY j.priority DESC, j.attempt, j.created_at, j.id) AS rn
        FROM bq_jobs j
        WHERE j.tenant_id = t.tenant_id AND j.status = 'queued' AND j.kind IN (SELECT kind FROM served)
        ORDER BY j.priority DESC, j.attempt, j.created_at, j.id
        LIMIT (SELECT greatest(free, 0) FROM cap)
    ) c
    WHERE t.tenant_id IS NOT NULL
), picked AS (
    SELECT id FROM candidates
    ORDER BY (slot > $1::bigint * weight), slot::float8 / weight, md5(tenant_id || $2::text), rn
    LIMIT (SELECT greatest(free, 0) FROM cap)
), locked AS (
    -- = ANY(ARRAY(...)), not IN (...): the planner cannot know `picked` is small, and chose
    -- a scan of every queued job for the semi-join; an array probes the primary key.
    SELECT id FROM bq_jobs WHERE id = ANY (ARRAY(SELECT id FROM picked)) AND status = 'queued'
      AND EXISTS (SELECT 1 FROM lead)
    ORDER BY id FOR UPDATE
), handed AS (
    UPDATE bq_jobs j SET status = 'dispatched', attempt = j.attempt + 1,
        lease_until = now() + make_interval(secs => $5), dispatched_at = clock_timestamp(), updated_at = now()
    FROM locked l WHERE j.id = l.id AND j.status = 'queued'
    RETURNING j.id, j.attempt
)
SELECT c.free, c.waiting,
       coalesce((SELECT array_agg(h.id ORDER BY h.id) FROM handed h), '{}'::uuid[]) AS ids,
       coalesce((SELECT array_agg(h.attempt ORDER BY h.id) FROM handed h), '{}'::int[]) AS attempts
FROM cap c;

-- name: undispatch
-- Gives back attempts the dispatcher could not push to arq. Only those very attempts:
-- if one lapsed meanwhile and another leader handed out its next attempt, it is left alone.
WITH locked AS (
    SELECT j.id FROM bq_jobs j JOIN unnest($1::uuid[], $2::int[]) AS a(id, attempt)
        ON a.id = j.id AND a.attempt = j.attempt
    WHERE j.status = 'dispatched' ORDER BY j.id FOR UPDATE OF j
)
UPDATE bq_jobs j SET status = 'queued', lease_until = NULL, updated_at = now()
FROM locked l WHERE j.id = l.id;

-- name: claim_attempts
-- Claims attempts ($1 job ids, $2 their attempt numbers) for worker $3 with a lease of $4 s.
-- An attempt runs only if it is still the job's current one and nobody started it: each
-- row is fenced on its own, so a stale, duplicate or stopped attempt in the batch is
-- simply absent from the answer. A worker claims the attempts arq started together in
-- one statement (blogqueue.worker.Claims). Rows are locked in id order, like dispatch and
-- stop_jobs, so concurrent multi-row writers cannot deadlock.
-- It also returns what model resolution needs (the user's preferred model and stored key
-- ciphertexts, as `ai_resolve`): no second round trip per job (issue #14).
WITH wanted AS (
    SELECT * FROM unnest($1::uuid[], $2::int[]) AS w(id, attempt)
), locked AS (
    SELECT j.id FROM bq_jobs j JOIN wanted w ON w.id = j.id AND w.attempt = j.attempt
    WHERE j.status = 'dispatched' AND NOT j.cancel_requested
    ORDER BY j.id FOR UPDATE OF j
), claimed AS (
    UPDATE bq_jobs j SET status = 'running', worker_id = $3,
        lease_until = now() + make_interval(secs => $4),
        started_at = coalesce(j.started_at, now()), updated_at = now()
    FROM locked l JOIN wanted w ON w.id = l.id
    WHERE j.id = l.id AND j.attempt = w.attempt AND j.status = 'dispatched' AND NOT j.cancel_requested
    RETURNING j.*
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT id, attempt, 'started', jsonb_build_object('worker', worker_id), 'running', stage FROM claimed
)
SELECT c.id, c.tenant_id, c.user_id, c.batch_id, c.kind, c.spec, c.model, c.attempt, c.failures,
       coalesce((SELECT jsonb_object_agg(s.stage, s.output) FROM bq_job_stages s
                 WHERE s.job_id = c.id), '{}'::jsonb) AS stages,
       (SELECT a.preferred_model FROM bq_ai_settings a
        WHERE a.tenant_id = c.tenant_id AND a.user_id = coalesce(c.user_id, '')) AS ai_preferred_model,
       coalesce((SELECT jsonb_object_agg(k.provider, k.ciphertext) FROM bq_provider_keys k
                 WHERE k.tenant_id = c.tenant_id AND k.user_id = coalesce(c.user_id, '')), '{}'::jsonb)
           AS ai_keys
FROM claimed c;

-- name: save_stages
-- Checkpoint: stage outputs ($3 names, $4 outputs, in stage order) are kept only while
-- this attempt still owns the job; $5 is the stage that runs next (shown as the job's
-- stage). Several stages at once: outputs of stages that made no paid call or side effect
-- wait for the next write (blogqueue.pipeline), and one `stage_done` event per stage is
-- written here, in stage order.
WITH owner AS (
    SELECT id FROM bq_jobs WHERE id = $1 AND attempt = $2 AND status = 'running' FOR UPDATE
), saved AS (
    SELECT s.stage, s.output, s.ord FROM unnest($3::text[], $4::jsonb[]) WITH ORDINALITY AS s(stage, output, ord)
), ins AS (
    INSERT INTO bq_job_stages (job_id, stage, attempt, output)
    SELECT o.id, s.stage, $2, s.output FROM owner o, saved s
    ON CONFLICT (job_id, stage) DO NOTHING
), upd AS (
    UPDATE bq_jobs j SET stage = $5, updated_at = now() FROM owner o WHERE j.id = o.id
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT o.id, $2, 'stage_done', jsonb_build_object('stage', s.stage), 'running', s.stage
    FROM owner o, saved s ORDER BY s.ord
)
SELECT count(*)::int AS owned FROM owner;

-- name: finish_attempt
-- End of an attempt: $3 is the next state (done, failed, cancelled, scheduled for a
-- retry, queued when released), $4 the failures it adds, $5 the retry delay.
-- A job asked to stop is never put back in the queue: it ends cancelled.
-- $11/$12: stage outputs not saved yet (the last stage's, and those of stages before it
-- that made no paid call), saved by this same statement under the same fence, with their
-- `stage_done` events before the finishing event; $13 the stage shown when not done.
WITH cur AS (
    SELECT id, CASE WHEN cancel_requested AND $3 IN ('scheduled', 'queued') THEN 'cancelled' ELSE $3 END AS next
    FROM bq_jobs WHERE id = $1 AND attempt = $2 AND status = 'running'
    FOR UPDATE
), saved AS (
    SELECT s.stage, s.output, s.ord FROM unnest($11::text[], $12::jsonb[]) WITH ORDINALITY AS s(stage, output, ord)
), ins AS (
    INSERT INTO bq_job_stages (job_id, stage, attempt, output)
    SELECT c.id, s.stage, $2, s.output FROM cur c, saved s
    ON CONFLICT (job_id, stage) DO NOTHING
), upd AS (
    UPDATE bq_jobs j SET
        status = c.next,
        failures = j.failures + $4,
        run_at = CASE WHEN c.next = 'scheduled' THEN now() + make_interval(secs => $5) ELSE j.run_at END,
        last_error = CASE WHEN c.next <> $3 THEN 'stopped by request' ELSE coalesce($6, j.last_error) END,
        error_code = CASE WHEN c.next <> $3 THEN 'cancelled' ELSE coalesce($7, j.error_code) END,
        result = coalesce($8::jsonb, j.result),
        stage = CASE WHEN c.next = 'done' THEN NULL ELSE coalesce($13, j.stage) END,
        finished_at = CASE WHEN c.next IN ('done', 'failed', 'cancelled') THEN now() END,
        lease_until = NULL, worker_id = NULL, updated_at = now()
    FROM cur c WHERE j.id = c.id
    RETURNING j.id, j.attempt, j.status, j.run_at, c.next <> $3 AS diverted, j.failures, j.stage
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT e.id, e.attempt, e.event, e.detail, e.status, e.stage FROM (
        SELECT u.id, u.attempt, 'stage_done' AS event, jsonb_build_object('stage', s.stage) AS detail,
               'running' AS status, s.stage, s.ord
        FROM upd u, saved s
        UNION ALL
        SELECT id, attempt, CASE WHEN diverted THEN 'cancelled' ELSE $9 END, $10::jsonb,
               bq_public_status(status, failures), coalesce($10::jsonb ->> 'stage', stage), 2147483647::bigint
        FROM upd
    ) e ORDER BY e.ord
)
-- No NOTIFY here: PostgreSQL runs a transaction in every listening backend per notification,
-- which cost three transactions per finished job; the leader polls while work waits instead
-- (blogqueue.dispatcher, issue #14).
SELECT u.id, u.status, u.run_at FROM upd u;

-- name: register_worker
-- $7: the kinds this worker's app registers (it runs only those).
INSERT INTO bq_workers (id, queue_name, hostname, pid, concurrency, prefetch, kinds)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: heartbeat
UPDATE bq_workers SET heartbeat_at = now(), in_flight = $2, jobs_done = $3, jobs_failed = $4,
    is_leader = $5
WHERE id = $1;

-- name: renew_leases
-- Keeps this worker's running attempts alive and tells it which ones were asked to stop.
-- Rows locked in id order, like every multi-row writer: the worker's grouped checkpoints
-- and finishes (one transaction for several jobs) lock theirs in id order too, so the two
-- cannot deadlock.
WITH locked AS (
    SELECT id FROM bq_jobs WHERE worker_id = $1 AND status = 'running' AND id = ANY($2::uuid[])
    ORDER BY id FOR UPDATE
)
UPDATE bq_jobs j SET lease_until = now() + make_interval(secs => $3)
FROM locked l WHERE j.id = l.id AND j.worker_id = $1 AND j.status = 'running'
RETURNING j.id, j.cancel_requested;

-- name: stop_worker
UPDATE bq_workers SET stopped_at = now(), in_flight = 0, is_leader = false WHERE id = $1;

-- name: prune_workers
DELETE FROM bq_workers
WHERE coalesce(stopped_at, heartbeat_at) < now() - interval '1 day';

-- name: leader_current
-- The queue's dispatcher lease as a follower sees it ($1 queue).
SELECT epoch, holder, backend_pid, lease_until > now() AS live,
       extract(epoch FROM lease_until - now())::float8 AS remaining_s
FROM bq_leader WHERE queue_name = $1;

-- name: leader_acquire
-- Takes the lease ($1 queue, $2 worker id, $3 lease seconds) when nobody holds it, its
-- holder let it lapse, or the holder is this worker coming back on a new connection (after
-- a PostgreSQL restart: no need to wait out its own lease); every take is a new epoch, which
-- fences whatever the previous epoch still had in flight. Returns nothing when a live leader
-- holds it (two followers racing: the second waits for the first's row lock, then finds
-- a live lease). The previous holder's backend is returned so it can be ended.
-- `prev` is read from the statement's snapshot (no FOR UPDATE: the upsert below modifies
-- that row in this same command, and a locking read would then skip it).
WITH prev AS (
    SELECT holder, backend_pid FROM bq_leader WHERE queue_name = $1
), taken AS (
    INSERT INTO bq_leader (queue_name, epoch, holder, backend_pid, lease_until)
    VALUES ($1, 1, $2, pg_backend_pid(), now() + make_interval(secs => $3))
    ON CONFLICT (queue_name) DO UPDATE SET
        epoch = bq_leader.epoch + 1, holder = EXCLUDED.holder, backend_pid = EXCLUDED.backend_pid,
        acquired_at = now(), lease_until = EXCLUDED.lease_until
    WHERE bq_leader.lease_until < now() OR bq_leader.holder = EXCLUDED.holder
    RETURNING epoch
)
SELECT t.epoch, p.holder AS previous_holder, p.backend_pid AS previous_pid
FROM taken t LEFT JOIN prev p ON true;

-- name: leader_renew
-- The leader's proof of life ($1 queue, $2 epoch, $3 lease seconds). No row: another
-- worker took over, and this one must stop dispatching at once.
UPDATE bq_leader SET lease_until = now() + make_interval(secs => $3)
WHERE queue_name = $1 AND epoch = $2
RETURNING extract(epoch FROM lease_until - now())::float8 AS remaining_s;

-- name: leader_release
-- A leader that shuts down gives the lease up, so a follower takes over at its next look.
UPDATE bq_leader SET lease_until = now() - interval '1 second'
WHERE queue_name = $1 AND epoch = $2;

-- name: leader_end_stale_backend
-- Ends the leadership connection of the holder a takeover replaced ($1 its pid, $2 its
-- application_name), unless it is this very session. Its writes are fenced anyway; this
-- frees what PostgreSQL would otherwise keep for a frozen or vanished host until TCP gives
-- up, and tells a woken stale leader at once that it is no longer in charge.
SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) AS ended
FROM pg_stat_activity
WHERE pid = $1 AND pid <> pg_backend_pid() AND application_name = $2;

-- Credits (sql/004_credits.sql): grants, reservations at enqueue, the balance, the invariant.

-- name: credit_balance
SELECT bq_credit_balance($1) AS balance;

-- name: credit_grant
INSERT INTO bq_credit_ledger (tenant_id, movement, amount, note) VALUES ($1, 'grant', $2, $3)
RETURNING id;

-- name: credit_reserve
-- One reservation per new job, in the enqueue's transaction; a replayed job is never reserved twice.
INSERT INTO bq_credit_ledger (tenant_id, job_id, movement, amount)
SELECT $1, r.job_id, 'reserve', r.amount
FROM unnest($2::uuid[], $3::bigint[]) AS r(job_id, amount)
ON CONFLICT DO NOTHING;

-- name: credit_summary
SELECT movement, count(*)::bigint AS n, coalesce(sum(amount), 0)::bigint AS amount
FROM bq_credit_ledger WHERE tenant_id = $1 GROUP BY movement;

-- name: credit_violations
-- Every way the ledger can be wrong; an empty answer means it is consistent. A job's movements
-- are per retry round (sql/010): a retried job reserves again, and each round settles once.
WITH t AS (
    SELECT tenant_id,
           sum(amount) FILTER (WHERE movement = 'grant') AS grants,
           sum(amount) FILTER (WHERE movement = 'charge') AS charges,
           bq_credit_balance(tenant_id) AS balance
    FROM bq_credit_ledger GROUP BY tenant_id
), open AS (
    SELECT r.tenant_id, sum(r.amount) AS amount FROM bq_credit_ledger r
    WHERE r.movement = 'reserve' AND NOT EXISTS (
        SELECT 1 FROM bq_credit_ledger s WHERE s.job_id = r.job_id AND s.retry_round = r.retry_round
                                           AND s.movement IN ('charge', 'release'))
    GROUP BY r.tenant_id
)
SELECT 'balance is not grants - charges - open reservations' AS problem, t.tenant_id, NULL::uuid AS job_id
FROM t LEFT JOIN open o ON o.tenant_id = t.tenant_id
WHERE t.balance <> coalesce(t.grants, 0) - coalesce(t.charges, 0) - coalesce(o.amount, 0)
UNION ALL
SELECT 'negative balance', tenant_id, NULL FROM t WHERE balance < 0
UNION ALL
SELECT 'settled without a reservation, or for another amount', s.tenant_id, s.job_id
FROM bq_credit_ledger s
WHERE s.movement IN ('charge', 'release') AND NOT EXISTS (
    SELECT 1 FROM bq_credit_ledger r
    WHERE r.job_id = s.job_id AND r.retry_round = s.retry_round AND r.movement = 'reserve' AND r.amount = s.amount
      AND r.tenant_id = s.tenant_id)
UNION ALL
SELECT 'both charged and released', tenant_id, job_id FROM bq_credit_ledger
WHERE movement IN ('charge', 'release') GROUP BY tenant_id, job_id, retry_round HAVING count(*) > 1
UNION ALL
SELECT 'reservation left open for a finished job', j.tenant_id, j.id
FROM bq_jobs j JOIN bq_credit_ledger r ON r.job_id = j.id AND r.movement = 'reserve'
WHERE j.status IN ('done', 'failed', 'cancelled') AND NOT EXISTS (
    SELECT 1 FROM bq_credit_ledger s WHERE s.job_id = j.id AND s.retry_round = r.retry_round
                                       AND s.movement IN ('charge', 'release'))
UNION ALL
SELECT 'charged but not done, or done but released', j.tenant_id, j.id
FROM bq_jobs j JOIN bq_credit_ledger s ON s.job_id = j.id AND s.retry_round = j.retries
WHERE (s.movement = 'charge' AND j.status <> 'done') OR (s.movement = 'release' AND j.status = 'done')
UNION ALL
SELECT 'an earlier round left unsettled or charged', j.tenant_id, j.id
FROM bq_jobs j JOIN bq_credit_ledger r ON r.job_id = j.id AND r.movement = 'reserve' AND r.retry_round < j.retries
WHERE NOT EXISTS (SELECT 1 FROM bq_credit_ledger s WHERE s.job_id = j.id AND s.retry_round = r.retry_round
                                                    AND s.movement = 'release');
-- ---------------------------------------------------------------------------
-- API tokens (HTTP service)

-- name: token_insert
INSERT INTO bq_tokens (id, tenant_id, user_id, is_admin, secret_hash, scope)
VALUES ($1, $2, $3, $5 = 'admin', $4, $5)
RETURNING id, tenant_id, user_id, is_admin, scope, created_at;

-- name: token_by_id
SELECT id, tenant_id, user_id, is_admin, scope, secret_hash, last_used_at
FROM bq_tokens WHERE id = $1 AND revoked_at IS NULL;

-- name: token_touch
-- last_used_at is coarse on purpose: at most one write per token per minute.
UPDATE bq_tokens SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: token_revoke
UPDATE bq_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
RETURNING id, tenant_id;

-- name: token_matches
SELECT id FROM bq_tokens WHERE starts_with(id, $1) AND revoked_at IS NULL ORDER BY id;

-- name: token_list
SELECT id, tenant_id, user_id, is_admin, scope, created_at, revoked_at, last_used_at
FROM bq_tokens WHERE tenant_id = $1 ORDER BY created_at, id;

-- ---------------------------------------------------------------------------
-- Metrics (GET /v1/metrics, GET /metrics)

-- name: metrics_status_counts
SELECT bq_public_status(status, failures) AS status, count(*)::bigint AS n
FROM bq_jobs GROUP BY 1;

-- name: metrics_backlog_by_tenant
SELECT tenant_id, count(*)::bigint AS backlog,
       count(*) FILTER (WHERE status IN ('dispatched', 'running'))::bigint AS in_flight
FROM bq_jobs WHERE status IN ('scheduled', 'queued', 'dispatched', 'running')
GROUP BY tenant_id ORDER BY backlog DESC, tenant_id LIMIT $1;

-- name: metrics_throughput
SELECT count(*) FILTER (WHERE finished_at > now() - interval '1 minute')::bigint AS finished_1m,
       count(*)::bigint AS finished_5m,
       count(*) FILTER (WHERE status = 'done')::bigint AS done_5m,
       count(*) FILTER (WHERE status = 'failed')::bigint AS failed_5m
FROM bq_jobs WHERE finished_at > now() - interval '5 minutes';

-- name: metrics_dispatcher_lag
-- Age of the oldest job that is ready and not yet handed to arq.
SELECT coalesce(extract(epoch FROM now() - min(greatest(created_at, run_at))), 0)::float8 AS lag_s,
       count(*)::bigint AS ready
FROM bq_jobs WHERE status = 'queued';

-- name: metrics_workers
SELECT id, hostname, pid, concurrency, in_flight, jobs_done, jobs_failed, is_leader,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s, started_at
FROM bq_workers WHERE queue_name = $1 AND stopped_at IS NULL ORDER BY started_at, id;
-- name: ai_settings_get
-- One user's AI settings: preferred model and the masked keys ($1 tenant, $2 user or '').
SELECT s.preferred_model, s.updated_at,
       coalesce((SELECT jsonb_object_agg(k.provider, jsonb_build_object('masked', k.masked,
                        'updated_at', k.updated_at))
                 FROM bq_provider_keys k WHERE k.tenant_id = $1 AND k.user_id = $2), '{}'::jsonb) AS keys
FROM (SELECT $1::text AS tenant_id, $2::text AS user_id) who
LEFT JOIN bq_ai_settings s USING (tenant_id, user_id);

-- name: ai_settings_put_model
INSERT INTO bq_ai_settings (tenant_id, user_id, preferred_model) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, user_id) DO UPDATE SET preferred_model = EXCLUDED.preferred_model, updated_at = now();

-- name: ai_settings_touch
INSERT INTO bq_ai_settings (tenant_id, user_id) VALUES ($1, $2)
ON CONFLICT (tenant_id, user_id) DO UPDATE SET updated_at = now();

-- name: provider_key_put
INSERT INTO bq_provider_keys (tenant_id, user_id, provider, ciphertext, masked) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, user_id, provider) DO UPDATE
SET ciphertext = EXCLUDED.ciphertext, masked = EXCLUDED.masked, updated_at = now();

-- name: provider_key_delete
DELETE FROM bq_provider_keys WHERE tenant_id = $1 AND user_id = $2 AND provider = $3;

-- name: ai_resolve
-- What a job's resolution needs: the user's preferred model and stored keys (ciphertexts by provider).
SELECT (SELECT preferred_model FROM bq_ai_settings WHERE tenant_id = $1 AND user_id = $2) AS preferred_model,
       coalesce((SELECT jsonb_object_agg(provider, ciphertext) FROM bq_provider_keys
                 WHERE tenant_id = $1 AND user_id = $2), '{}'::jsonb) AS keys;

-- name: provider_keys_all
SELECT tenant_id, user_id, provider, ciphertext FROM bq_provider_keys ORDER BY tenant_id, user_id, provider;

-- name: provider_key_recipher
UPDATE bq_provider_keys SET ciphertext = $5 WHERE tenant_id = $1 AND user_id = $2 AND provider = $3
    AND ciphertext = $4;

-- Wix installations

-- name: wix_installation_get
SELECT tenant_id, instance_id, source, created_at, updated_at FROM bq_wix_installations WHERE tenant_id = $1;

-- name: wix_installation_put
-- Links the tenant to an instance, or moves its link to another one. An instance already linked to
-- another tenant violates the unique instance_id (the library answers 409 and nothing changes).
INSERT INTO bq_wix_installations (tenant_id, instance_id, source) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id) DO UPDATE SET instance_id = EXCLUDED.instance_id, source = EXCLUDED.source,
    updated_at = now()
RETURNING tenant_id, instance_id, source, created_at, updated_at;

-- name: wix_installation_owner
SELECT tenant_id FROM bq_wix_installations WHERE instance_id = $1;

-- name: wix_installation_delete
DELETE FROM bq_wix_installations WHERE tenant_id = $1 RETURNING instance_id;

-- name: wix_installation_delete_instance
-- The "App Instance Removed" webhook: unlinks whichever tenant holds this instance.
DELETE FROM bq_wix_installations WHERE instance_id = $1 RETURNING tenant_id;

-- name: wix_instance_for_tenant
SELECT instance_id FROM bq_wix_installations WHERE tenant_id = $1;

-- ---------------------------------------------------------------------------
-- The operator console's figures (GET /v1/metrics: tenants, recent failures and
-- batches, leader; DESIGN §12) and the Prometheus finished-by-outcome gauge.

-- name: console_tenants
-- Per tenant: backlog and in flight now; done / failed / cancelled in the last 5 minutes;
-- the mean wait to first start of jobs first started in the last 5 minutes (from when they
-- could run: created, or their run_at; jobs whose run_at moved after their first start, by a
-- retry, are left out);
-- and how long its oldest never-started ready job has waited. Reads only unfinished rows
-- (bq_jobs_backlog) and rows finished in 5 minutes (bq_jobs_finished): a job first started
-- in the last 5 minutes is one of the two. The mean, not the median: plain aggregates let
-- PostgreSQL hash by tenant; an ordered-set one sorted every unfinished row (4x slower at 100k).
WITH recent AS (
    SELECT tenant_id, status, started_at, created_at, run_at, failures
    FROM bq_jobs WHERE status IN ('scheduled', 'queued', 'dispatched', 'running')
    UNION ALL
    SELECT tenant_id, status, started_at, created_at, run_at, failures
    FROM bq_jobs WHERE finished_at > now() - interval '5 minutes' AND status IN ('done', 'failed', 'cancelled')
)
SELECT tenant_id,
       count(*) FILTER (WHERE status IN ('scheduled', 'queued', 'dispatched', 'running'))::bigint AS backlog,
       count(*) FILTER (WHERE status IN ('dispatched', 'running'))::bigint AS in_flight,
       count(*) FILTER (WHERE status = 'done')::bigint AS done_5m,
       count(*) FILTER (WHERE status = 'failed')::bigint AS failed_5m,
       count(*) FILTER (WHERE status = 'cancelled')::bigint AS cancelled_5m,
       avg(extract(epoch FROM started_at - greatest(created_at, run_at)))
           FILTER (WHERE started_at > now() - interval '5 minutes' AND run_at <= started_at)::float8
           AS first_start_wait_s,
       coalesce(max(extract(epoch FROM now() - greatest(created_at, run_at)))
                FILTER (WHERE status = 'queued' AND started_at IS NULL), 0)::float8 AS oldest_waiting_s
FROM recent
GROUP BY tenant_id
ORDER BY backlog DESC, count(*) DESC, tenant_id
LIMIT $1;

-- name: console_recent_failures
-- Newest failed jobs first (bq_jobs_failed_recent).
SELECT id, tenant_id, batch_id, kind, stage, attempt, error_code, last_error, finished_at
FROM bq_jobs WHERE status = 'failed'
ORDER BY finished_at DESC LIMIT $1;

-- name: console_recent_batches
-- The newest batches with their jobs counted by public status (bq_batches_created, bq_jobs_batch).
SELECT b.id, b.tenant_id, b.job_count, b.created_at, c.counts
FROM (SELECT * FROM bq_batches ORDER BY created_at DESC LIMIT $1) b
CROSS JOIN LATERAL (
    SELECT coalesce(jsonb_object_agg(s.status, s.n), '{}'::jsonb) AS counts
    FROM (SELECT bq_public_status(status, failures) AS status, count(*) AS n
          FROM bq_jobs WHERE batch_id = b.id GROUP BY 1) s
) c
ORDER BY b.created_at DESC, b.id;

-- name: console_leader
SELECT holder, epoch, greatest(extract(epoch FROM lease_until - now()), 0)::float8 AS lease_left_s
FROM bq_leader WHERE queue_name = $1;

-- name: metrics_finished_by_outcome
-- Jobs finished in the last 5 minutes by kind and outcome (bq_jobs_finished): the error-rate
-- alert's input. A window over an index, so a scrape costs the same on a table of millions.
SELECT kind, status AS outcome, count(*)::bigint AS n
FROM bq_jobs WHERE finished_at > now() - interval '5 minutes' AND status IN ('done', 'failed', 'cancelled')
GROUP BY kind, status ORDER BY kind, status;

-- ---------------------------------------------------------------------------
-- The event stream (blogqueue/events.py) and batch retry.

-- name: events_poll
-- The stream's shared poller: events after $1 (at most $2) with what the stream shows of their
-- job, in one statement, so one snapshot: `open_xids` are the transactions of this database still
-- open after that snapshot was taken, `still_open` how many of $3 (a previous poll's open_xids) were
-- still open in it. An id missing below a visible one belongs to a transaction that was open at
-- that poll or rolled back; once none of that poll's open_xids is open any more, the gap is final.
WITH ev AS (
    SELECT e.id, e.job_id, e.attempt, e.at, e.event, e.detail,
           coalesce(e.status, bq_public_status(j.status, j.failures)) AS status,
           coalesce(e.stage, e.detail ->> 'stage') AS stage,
           j.tenant_id, j.batch_id, j.kind
    FROM bq_job_events e JOIN bq_jobs j ON j.id = e.job_id
    WHERE e.id > $1
    ORDER BY e.id LIMIT $2
), open AS (
    SELECT coalesce(array_agg(backend_xid::text::bigint), '{}') AS open_xids
    FROM pg_stat_activity WHERE datname = current_database() AND backend_xid IS NOT NULL
), still AS (
    SELECT coalesce(array_agg(xid(x)::text::bigint), '{}') AS still_open
    FROM pg_snapshot_xip(pg_current_snapshot()) AS x
    WHERE xid(x)::text::bigint = ANY($3::bigint[])
)
SELECT ev.*, open.open_xids, still.still_open FROM open CROSS JOIN still LEFT JOIN ev ON true
ORDER BY ev.id;

-- name: events_head
-- Where a new poller starts: the last visible event and the transactions still open.
SELECT coalesce((SELECT max(id) FROM bq_job_events), 0)::bigint AS last,
       (SELECT coalesce(array_agg(backend_xid::text::bigint), '{}') FROM pg_stat_activity
        WHERE datname = current_database() AND backend_xid IS NOT NULL) AS open_xids;

-- name: events_since
-- A resuming reader's backlog: events after $1 up to $2 (a bound the poller has settled: no id at
-- or below it can still appear), of tenant $3 and batch $4 when given, oldest first, at most $5.
SELECT e.id, e.job_id, e.attempt, e.at, e.event, e.detail,
       coalesce(e.status, bq_public_status(j.status, j.failures)) AS status,
       coalesce(e.stage, e.detail ->> 'stage') AS stage,
       j.tenant_id, j.batch_id, j.kind
FROM bq_job_events e JOIN bq_jobs j ON j.id = e.job_id
WHERE e.id > $1 AND e.id <= $2
  AND ($3::text IS NULL OR j.tenant_id = $3) AND ($4::uuid IS NULL OR j.batch_id = $4)
ORDER BY e.id LIMIT $5;

-- name: retry_candidates
-- A batch's failed jobs ($1), locked, with their current round's reservation (NULL: none, credits
-- were off at enqueue) and whether it was released (a failed job's always is).
SELECT j.id, j.retries, r.amount AS reserved,
       EXISTS (SELECT 1 FROM bq_credit_ledger s WHERE s.job_id = j.id AND s.retry_round = j.retries
                                                  AND s.movement = 'release') AS released
FROM bq_jobs j
LEFT JOIN bq_credit_ledger r ON r.job_id = j.id AND r.movement = 'reserve' AND r.retry_round = j.retries
WHERE j.batch_id = $1 AND j.status = 'failed'
ORDER BY j.id
FOR UPDATE OF j;

-- name: backlog_admit
-- One tenant's admission of $2 jobs against both backlog limits ($3 tenant, $4 global), as an
-- enqueue's (bq_backlog_admit, migration 013): a batch retry queues jobs again through it.
SELECT admitted, tenant_live, total_live FROM bq_backlog_admit(ARRAY[$1::text], ARRAY[$2::bigint], $3, $4);

-- name: retry_jobs
-- Failed jobs ($1) queued again for a new round: failures reset (the retry schedule applies afresh),
-- attempt kept (the next dispatch takes attempt + 1, so arq ids and fencing stay unique), stage kept
-- (the first unsaved one: saved stages are not run again). Old values come from `o`, the row as
-- it was before this statement.
WITH upd AS (
    UPDATE bq_jobs j SET status = 'queued', failures = 0, retries = j.retries + 1, run_at = now(),
        cancel_requested = false, last_error = NULL, error_code = NULL, finished_at = NULL,
        lease_until = NULL, worker_id = NULL, updated_at = now()
    FROM bq_jobs o
    WHERE j.id = ANY($1::uuid[]) AND o.id = j.id AND j.status = 'failed'
    RETURNING j.id, j.attempt, j.stage, j.retries, o.error_code AS previous_code, o.failures AS previous_failures
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT id, attempt, 'retried',
           jsonb_build_object('round', retries, 'previous_error_code', previous_code,
                              'previous_failures', previous_failures), 'queued', stage
    FROM upd
)
SELECT id FROM upd ORDER BY id;

-- name: credit_reserve_round
-- A retried job's new reservation ($2 job ids, $3 amounts, $4 rounds), in the retry's transaction.
INSERT INTO bq_credit_ledger (tenant_id, job_id, movement, amount, retry_round)
SELECT $1, r.job_id, 'reserve', r.amount, r.retry_round
FROM unnest($2::uuid[], $3::bigint[], $4::int[]) AS r(job_id, amount, retry_round);
-- Batch lane and per-call replay (sql/009_batch_lane.sql; blogqueue/replay.py, blogqueue/batchlane.py).

-- name: call_responses
SELECT call_no, request_hash, response FROM bq_call_responses WHERE job_id = $1 AND stage = $2;

-- name: save_call_responses
-- Answers are facts already paid for: kept whoever holds the attempt; a later write of the
-- same call (a retry whose request changed) replaces the earlier one.
INSERT INTO bq_call_responses (job_id, stage, call_no, request_hash, lane, response)
SELECT $1, $2, c, h, l, r FROM unnest($3::int[], $4::text[], $5::text[], $6::jsonb[]) AS x(c, h, l, r)
ON CONFLICT (job_id, stage, call_no) DO UPDATE SET
    request_hash = EXCLUDED.request_hash, lane = EXCLUDED.lane, response = EXCLUDED.response,
    created_at = now();

-- name: batch_request_for_call
SELECT id, state, request_hash, error FROM bq_batch_requests WHERE job_id = $1 AND stage = $2 AND call_no = $3;

-- name: batch_request_consume
-- A request whose outcome the stage has taken (an error raised, a fallback to the now-lane):
-- gone, so a later attempt of the stage may send the call again.
DELETE FROM bq_batch_requests WHERE id = $1 AND state IN ('error', 'fallback', 'cancelled', 'done');

-- name: batch_park
-- A batch-lane call: its request is recorded and the job parked, in one statement, while this
-- attempt owns the job and no stop was asked ($11: the event's detail). Frees a dispatch slot.
WITH owner AS (
    SELECT id, cancel_requested FROM bq_jobs WHERE id = $1 AND attempt = $2 AND status = 'running' FOR UPDATE
), req AS (
    INSERT INTO bq_batch_requests (job_id, stage, call_no, provider, key_hash, model, request_hash, body,
                                   est_tokens, state)
    SELECT id, $3, $4, $5, $6, $7, $8, $9, $10, 'pending' FROM owner WHERE NOT cancel_requested
    ON CONFLICT (job_id, stage, call_no) DO NOTHING
), upd AS (
    UPDATE bq_jobs j SET status = 'parked', lease_until = NULL, worker_id = NULL, updated_at = now()
    FROM owner o WHERE j.id = o.id AND NOT o.cancel_requested
    RETURNING j.id
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT id, $2, 'parked', $11::jsonb, 'running', $3 FROM upd
), wake AS (
    SELECT pg_notify('blogqueue_dispatch', 'slot') FROM upd
)
SELECT o.cancel_requested, (SELECT count(*) FROM wake) AS woke FROM owner o;

-- name: batch_pending_groups
-- The collectors: pending requests per (provider, key hash, model), how many, how old.
SELECT provider, key_hash, model, count(*)::int AS n,
       extract(epoch FROM now() - min(created_at))::float8 AS age_s
FROM bq_batch_requests WHERE state = 'pending'
GROUP BY provider, key_hash, model;

-- name: batch_pending_take
-- The oldest pending requests of one collector ($1 provider, $2 key hash, $3 model, $4 at most).
SELECT r.id, r.custom_id, r.job_id, r.body, r.est_tokens, j.status AS job_status
FROM bq_batch_requests r JOIN bq_jobs j ON j.id = r.job_id
WHERE r.state = 'pending' AND r.provider = $1 AND r.key_hash = $2 AND r.model = $3
ORDER BY r.id LIMIT $4;

-- name: batch_drop_unwanted
-- Pending requests whose job is no longer parked (stopped meanwhile) are never submitted.
UPDATE bq_batch_requests r SET state = 'cancelled', finished_at = now()
FROM bq_jobs j
WHERE r.id = ANY($1::bigint[]) AND r.state = 'pending' AND j.id = r.job_id AND j.status <> 'parked';

-- name: batch_open_tokens
-- Enqueued tokens of a collector's open batches (OpenAI's batch queue limit counts these).
SELECT coalesce(sum(est_tokens), 0)::bigint FROM bq_provider_batches
WHERE provider = $1 AND key_hash = $2 AND model = $3 AND state IN ('intent', 'submitted');

-- name: batch_intent
-- The intent, recorded before anything is uploaded, with its requests, fenced by the
-- leadership epoch ($8 queue, $9 epoch) like every dispatch statement.
WITH lead AS (
    SELECT 1 FROM bq_leader WHERE queue_name = $8 AND epoch = $9 AND lease_until > now() FOR SHARE
), intent AS (
    INSERT INTO bq_provider_batches (id, provider, key_hash, model, state, request_count, est_tokens)
    SELECT $1, $2, $3, $4, 'intent', $5, $6 FROM lead
    RETURNING id
)
UPDATE bq_batch_requests r SET state = 'submitted', batch_id = i.id
FROM intent i
WHERE r.id = ANY($7::bigint[]) AND r.state = 'pending'
RETURNING r.id, r.custom_id;

-- name: batch_submitted
-- The provider's id, recorded after the upload ($3: when to poll first).
UPDATE bq_provider_batches SET state = 'submitted', provider_batch_id = $2, submitted_at = now(),
    next_poll_at = now() + make_interval(secs => $3)
WHERE id = $1 AND state = 'intent'
RETURNING id;

-- name: batch_orphan_intents
-- Intents a leader recorded and did not finish (it died between recording and uploading, or
-- between uploading and recording the provider's id): reconciled with the provider's list.
SELECT b.id, b.provider, b.key_hash, b.model, b.created_at,
       (SELECT r.job_id FROM bq_batch_requests r WHERE r.batch_id = b.id LIMIT 1) AS any_job
FROM bq_provider_batches b
WHERE b.state = 'intent' AND b.created_at < now() - make_interval(secs => $1) AND NOT (b.id = ANY($2::uuid[]))
ORDER BY b.created_at;

-- name: batch_known_ids
-- Provider batch ids already recorded for a (provider, key): a recovered intent is none of them.
SELECT provider_batch_id FROM bq_provider_batches
WHERE provider = $1 AND key_hash = $2 AND provider_batch_id IS NOT NULL
  AND created_at > now() - interval '2 days';

-- name: batch_job_for_key
-- What resolving a collector's API key needs of one of its jobs (blogqueue/resolve.py).
SELECT id, tenant_id, user_id, model FROM bq_jobs WHERE id = $1;

-- name: batch_requests_of
SELECT id, custom_id, job_id, body FROM bq_batch_requests WHERE batch_id = $1 ORDER BY id;

-- name: batch_due_polls
SELECT b.id, b.provider, b.key_hash, b.model, b.provider_batch_id, b.polls, b.cancel_sent,
       (SELECT r.job_id FROM bq_batch_requests r WHERE r.batch_id = b.id LIMIT 1) AS any_job,
       EXISTS (SELECT 1 FROM bq_batch_requests r JOIN bq_jobs j ON j.id = r.job_id
               WHERE r.batch_id = b.id AND r.state = 'submitted' AND j.status = 'parked') AS wanted
FROM bq_provider_batches b
WHERE b.state = 'submitted' AND b.next_poll_at <= now()
ORDER BY b.next_poll_at LIMIT $1;

-- name: batch_poll_later
UPDATE bq_provider_batches SET polls = polls + 1, next_poll_at = now() + make_interval(secs => $2),
    cancel_sent = cancel_sent OR $3
WHERE id = $1 AND state = 'submitted';

-- name: batch_store_answers
-- Answers of one provider batch ($5): each request done, its answer kept for the stage's
-- replay, its job queued again (when still parked).
WITH ans AS (
    SELECT * FROM unnest($1::text[], $2::jsonb[], $3::int[], $4::int[]) AS a(custom_id, response, pt, ct)
), req AS (
    UPDATE bq_batch_requests r SET state = 'done', prompt_tokens = a.pt, completion_tokens = a.ct,
        finished_at = now()
    FROM ans a WHERE r.custom_id = a.custom_id AND r.batch_id = $5 AND r.state = 'submitted'
    RETURNING r.job_id, r.stage, r.call_no, r.request_hash, a.response
), saved AS (
    INSERT INTO bq_call_responses (job_id, stage, call_no, request_hash, lane, response)
    SELECT job_id, stage, call_no, request_hash, 'batch', response FROM req
    ON CONFLICT (job_id, stage, call_no) DO UPDATE SET
        request_hash = EXCLUDED.request_hash, lane = 'batch', response = EXCLUDED.response, created_at = now()
), unpark AS (
    UPDATE bq_jobs j SET status = 'queued', updated_at = now()
    FROM req WHERE j.id = req.job_id AND j.status = 'parked'
    RETURNING j.id, j.attempt, req.stage
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT id, attempt, 'batch_answered', jsonb_build_object('stage', stage), 'running', stage FROM unpark
)
SELECT count(*)::int AS n FROM req;

-- name: batch_store_errors
-- Requests the provider refused ($2: the §4 class and message each); their jobs run again and
-- the stage raises the error once.
WITH ans AS (
    SELECT * FROM unnest($1::text[], $2::jsonb[]) AS a(custom_id, error)
), req AS (
    UPDATE bq_batch_requests r SET state = 'error', error = a.error, finished_at = now()
    FROM ans a WHERE r.custom_id = a.custom_id AND r.batch_id = $3 AND r.state = 'submitted'
    RETURNING r.job_id, r.stage, a.error
), unpark AS (
    UPDATE bq_jobs j SET status = 'queued', updated_at = now()
    FROM req WHERE j.id = req.job_id AND j.status = 'parked'
    RETURNING j.id, j.attempt, req.stage, req.error
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT id, attempt, 'batch_request_failed', jsonb_build_object('stage', stage, 'error', error), 'running', stage
    FROM unpark
)
SELECT count(*)::int AS n FROM req;

-- name: batch_end
-- The batch ended ($2 ended | expired | failed | cancelled; an intent the provider refused
-- to take ends failed too): whatever it did not answer goes back to the now-lane (state
-- fallback, counted), its jobs queued again.
WITH b AS (
    UPDATE bq_provider_batches SET state = $2, ended_at = now(), succeeded = $3, errored = $4,
        fell_back = (SELECT count(*) FROM bq_batch_requests WHERE batch_id = $1 AND state = 'submitted')
    WHERE id = $1 AND state IN ('intent', 'submitted')
    RETURNING id
), req AS (
    UPDATE bq_batch_requests r SET state = 'fallback', finished_at = now()
    FROM b WHERE r.batch_id = b.id AND r.state = 'submitted'
    RETURNING r.job_id, r.stage
), unpark AS (
    UPDATE bq_jobs j SET status = 'queued', updated_at = now()
    FROM req WHERE j.id = req.job_id AND j.status = 'parked'
    RETURNING j.id, j.attempt, req.stage
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail, status, stage)
    SELECT id, attempt, 'batch_fallback', jsonb_build_object('stage', stage, 'batch', $2::text), 'running', stage
    FROM unpark
), wake AS (
    SELECT pg_notify('blogqueue_dispatch', 'batch') FROM (SELECT 1 FROM unpark LIMIT 1) x
)
SELECT (SELECT count(*) FROM req)::int AS fell_back, (SELECT count(*) FROM wake) AS woke;

-- name: batch_lane_stats
-- For /v1/metrics and /metrics.
SELECT
    (SELECT count(*) FROM bq_jobs WHERE status = 'parked')::int AS parked_jobs,
    (SELECT count(*) FROM bq_provider_batches WHERE state IN ('intent', 'submitted'))::int AS open_batches,
    (SELECT count(*) FROM bq_batch_requests WHERE state = 'done')::bigint AS batch_requests_done,
    (SELECT coalesce(sum(fell_back), 0) FROM bq_provider_batches)::bigint AS batch_fallbacks,
    (SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM bq_batch_requests
     WHERE state = 'done')::bigint AS batch_tokens;
