-- Every query the engine runs, by name. Python calls them through blogqueue.db.Q.
-- Statements that change a job's state say which state they expect in their
-- WHERE clause: the database, not Python, decides who wins a race.

-- name: lock_tenant_enqueue
-- Serialises enqueues of one tenant so its backlog limit and idempotency keys are exact.
SELECT pg_advisory_xact_lock(hashtext('blogqueue.enqueue'), hashtext($1));

-- name: backlog_counts
SELECT count(*) FILTER (WHERE tenant_id = $1) AS tenant,
       count(*) AS total,
       count(DISTINCT tenant_id) AS tenants
FROM bq_jobs
WHERE status IN ('scheduled', 'queued', 'dispatched', 'running');

-- name: finished_since
SELECT count(*) AS n FROM bq_jobs WHERE finished_at > now() - make_interval(secs => $1);

-- name: find_by_idempotency_keys
SELECT id, idempotency_key, request_hash, batch_id
FROM bq_jobs WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[]);

-- name: insert_batch
INSERT INTO bq_batches (id, tenant_id, job_count) VALUES ($1, $2, $3);

-- name: insert_jobs
-- Bulk insert, one array per column; run_at NULL means now.
WITH rows AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[],
                         $6::text[], $7::text[], $8::timestamptz[], $9::text[])
        AS r(id, kind, spec, model, priority, idempotency_key, request_hash, run_at, stage)
), ins AS (
    INSERT INTO bq_jobs (id, tenant_id, user_id, batch_id, kind, spec, model, priority,
                         idempotency_key, request_hash, status, run_at, stage)
    SELECT r.id, $10, $11, $12, r.kind, r.spec, r.model, r.priority, r.idempotency_key,
           r.request_hash,
           CASE WHEN r.run_at > now() THEN 'scheduled' ELSE 'queued' END,
           coalesce(r.run_at, now()), r.stage
    FROM rows r
    RETURNING id, status, run_at
)
INSERT INTO bq_job_events (job_id, attempt, event)
SELECT id, 0, 'enqueued' FROM ins;

-- name: notify_dispatcher
SELECT pg_notify('blogqueue_dispatch', $1);

-- name: get_job
SELECT j.*, bq_public_status(j.status, j.failures) AS public_status
FROM bq_jobs j WHERE j.id = $1 AND ($2::text IS NULL OR j.tenant_id = $2);

-- name: job_events
SELECT attempt, at, event, detail FROM bq_job_events WHERE job_id = $1 ORDER BY id LIMIT $2;

-- name: job_stages
SELECT stage, attempt, output, created_at FROM bq_job_stages WHERE job_id = $1 ORDER BY created_at;

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
  AND status IN ('scheduled', 'queued', 'dispatched', 'running');

-- name: stoppable_batch
SELECT id FROM bq_jobs
WHERE batch_id = $1 AND ($2::text IS NULL OR tenant_id = $2)
  AND status IN ('scheduled', 'queued', 'dispatched', 'running');

-- name: stoppable_tenant
SELECT id FROM bq_jobs
WHERE tenant_id = $1 AND status IN ('scheduled', 'queued', 'dispatched', 'running');

-- name: stop_jobs
-- Waiting work is cancelled now; running work is flagged and its worker told.
WITH target AS (
    SELECT id, status FROM bq_jobs
    WHERE id = ANY($1::uuid[]) AND status IN ('scheduled', 'queued', 'dispatched', 'running')
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
    RETURNING j.id, j.attempt, j.status
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event)
    SELECT id, attempt, CASE WHEN status = 'running' THEN 'stop_requested' ELSE 'cancelled' END
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
    RETURNING j.id, j.attempt, j.status
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail)
    SELECT id, attempt, 'lease_expired', jsonb_build_object('now', status) FROM upd
)
SELECT id, attempt, status FROM upd;

-- name: free_capacity
-- Free in-flight slots: the live workers' concurrency plus prefetch ($1 queue, heartbeat
-- within $2 s) minus the attempts dispatched or running; `waiting`: is work queued?
SELECT EXISTS (SELECT 1 FROM bq_jobs WHERE status = 'queued') AS waiting,
       (SELECT coalesce(sum(concurrency + prefetch), 0) FROM bq_workers
        WHERE queue_name = $1 AND stopped_at IS NULL
          AND heartbeat_at > now() - make_interval(secs => $2))::int
     - (SELECT count(*) FROM bq_jobs WHERE status IN ('dispatched', 'running'))::int AS free;

-- name: fair_candidates
-- Weighted round robin as water-filling: every candidate gets the in-flight count
-- its tenant would reach by taking it ("slot"); candidates are taken lowest
-- slot/weight first, so each free slot goes to the tenant furthest below its share.
-- Candidates that would pass the per-tenant cap come after every one that would
-- not: the cap binds only while other tenants have work that can use the slot.
-- Ties between tenants rotate with $3. Only kinds some live worker of queue $4 knows
-- (heartbeat within $5 s) are candidates: other kinds wait for such a worker.
WITH RECURSIVE served AS (
    SELECT DISTINCT unnest(coalesce(kinds, ARRAY['blog_post', 'product_optimization'])) AS kind
    FROM bq_workers
    WHERE queue_name = $4 AND stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $5)
), tenants AS (
    (SELECT tenant_id FROM bq_jobs WHERE status = 'queued' ORDER BY tenant_id LIMIT 1)
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
        LIMIT $1
    ) c
    WHERE t.tenant_id IS NOT NULL
)
SELECT id, tenant_id FROM candidates
ORDER BY (slot > $2::bigint * weight), slot::float8 / weight, md5(tenant_id || $3::text), rn
LIMIT $1;

-- name: dispatch
-- Multi-row writers (this, stop_jobs) lock rows in id order, so they cannot deadlock.
-- Fenced by the leadership epoch ($3 queue, $4 epoch), like promote_scheduled: a stale
-- leader hands out nothing, so it pushes nothing to arq.
WITH lead AS (
    SELECT 1 FROM bq_leader WHERE queue_name = $3 AND epoch = $4 AND lease_until > now() FOR SHARE
), locked AS (
    SELECT id FROM bq_jobs WHERE id = ANY($1::uuid[]) AND status = 'queued' AND EXISTS (SELECT 1 FROM lead)
    ORDER BY id FOR UPDATE
)
UPDATE bq_jobs j SET status = 'dispatched', attempt = j.attempt + 1,
    lease_until = now() + make_interval(secs => $2), dispatched_at = clock_timestamp(), updated_at = now()
FROM locked l WHERE j.id = l.id AND j.status = 'queued'
RETURNING j.id, j.attempt;

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
    INSERT INTO bq_job_events (job_id, attempt, event, detail)
    SELECT id, attempt, 'started', jsonb_build_object('worker', worker_id) FROM claimed
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
    INSERT INTO bq_job_events (job_id, attempt, event, detail)
    SELECT o.id, $2, 'stage_done', jsonb_build_object('stage', s.stage) FROM owner o, saved s ORDER BY s.ord
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
    RETURNING j.id, j.attempt, j.status, j.run_at, c.next <> $3 AS diverted
), ev AS (
    INSERT INTO bq_job_events (job_id, attempt, event, detail)
    SELECT e.id, e.attempt, e.event, e.detail FROM (
        SELECT u.id, u.attempt, 'stage_done' AS event, jsonb_build_object('stage', s.stage) AS detail, s.ord
        FROM upd u, saved s
        UNION ALL
        SELECT id, attempt, CASE WHEN diverted THEN 'cancelled' ELSE $9 END, $10::jsonb, 2147483647::bigint FROM upd
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

-- name: kind_served
-- Does some live worker know this kind? (NULL kinds: a pre-007 worker, built-in kinds only.)
SELECT EXISTS (
    SELECT 1 FROM bq_workers
    WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $2)
      AND $1 = ANY(coalesce(kinds, ARRAY['blog_post', 'product_optimization']))
) AS served;

-- name: heartbeat
UPDATE bq_workers SET heartbeat_at = now(), in_flight = $2, jobs_done = $3, jobs_failed = $4,
    is_leader = $5
WHERE id = $1;

-- name: renew_leases
-- Keeps this worker's running attempts alive and tells it which ones were asked to stop.
UPDATE bq_jobs SET lease_until = now() + make_interval(secs => $3)
WHERE worker_id = $1 AND status = 'running' AND id = ANY($2::uuid[])
RETURNING id, cancel_requested;

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
-- Every way the ledger can be wrong; an empty answer means it is consistent.
WITH t AS (
    SELECT tenant_id,
           sum(amount) FILTER (WHERE movement = 'grant') AS grants,
           sum(amount) FILTER (WHERE movement = 'charge') AS charges,
           bq_credit_balance(tenant_id) AS balance
    FROM bq_credit_ledger GROUP BY tenant_id
), open AS (
    SELECT r.tenant_id, sum(r.amount) AS amount FROM bq_credit_ledger r
    WHERE r.movement = 'reserve' AND NOT EXISTS (
        SELECT 1 FROM bq_credit_ledger s WHERE s.job_id = r.job_id AND s.movement IN ('charge', 'release'))
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
    WHERE r.job_id = s.job_id AND r.movement = 'reserve' AND r.amount = s.amount AND r.tenant_id = s.tenant_id)
UNION ALL
SELECT 'both charged and released', tenant_id, job_id FROM bq_credit_ledger
WHERE movement IN ('charge', 'release') GROUP BY tenant_id, job_id HAVING count(*) > 1
UNION ALL
SELECT 'reservation left open for a finished job', j.tenant_id, j.id
FROM bq_jobs j JOIN bq_credit_ledger r ON r.job_id = j.id AND r.movement = 'reserve'
WHERE j.status IN ('done', 'failed', 'cancelled') AND NOT EXISTS (
    SELECT 1 FROM bq_credit_ledger s WHERE s.job_id = j.id AND s.movement IN ('charge', 'release'))
UNION ALL
SELECT 'charged but not done, or done but released', j.tenant_id, j.id
FROM bq_jobs j JOIN bq_credit_ledger s ON s.job_id = j.id
WHERE (s.movement = 'charge' AND j.status <> 'done') OR (s.movement = 'release' AND j.status = 'done');
-- ---------------------------------------------------------------------------
-- API tokens (HTTP service)

-- name: token_insert
INSERT INTO bq_tokens (id, tenant_id, user_id, is_admin, secret_hash)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, tenant_id, user_id, is_admin, created_at;

-- name: token_by_id
SELECT id, tenant_id, user_id, is_admin, secret_hash, last_used_at
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
SELECT id, tenant_id, user_id, is_admin, created_at, revoked_at, last_used_at
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
