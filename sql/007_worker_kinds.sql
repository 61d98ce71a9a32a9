-- The job kinds each worker's app registers. The dispatcher hands out only kinds
-- some live worker knows, so a job of a kind no worker runs waits in the queue
-- (with a visible reason) instead of being retried into failure.
-- NULL: a worker from before this migration, taken to know the built-in kinds.
ALTER TABLE bq_workers ADD COLUMN IF NOT EXISTS kinds text[];
