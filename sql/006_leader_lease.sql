-- The dispatcher's leadership, as a lease in a row instead of a session advisory lock.
--
-- A session lock lives as long as its session, and PostgreSQL keeps the session of
-- a frozen or partitioned host until TCP gives up on it (about two hours with the
-- server's keepalive defaults): nobody could take over. A lease lapses on its own.
--
-- One row per queue. The leader renews `lease_until` every HEARTBEAT_SECONDS; when
-- it has lapsed a follower takes the row over and `epoch` goes up by one. Every
-- dispatch statement names the epoch it was issued under and locks this row
-- (FOR SHARE), so a stale leader's writes change nothing, and a takeover waits for
-- the statements of the old epoch that already hold the row.
CREATE TABLE bq_leader (
    queue_name   text PRIMARY KEY,
    epoch        bigint NOT NULL,
    holder       text NOT NULL,         -- the worker id (bq_workers.id) of the leader
    backend_pid  integer NOT NULL,      -- its leadership connection, ended on takeover
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz NOT NULL
);
