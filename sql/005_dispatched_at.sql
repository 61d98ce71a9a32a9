-- When the current attempt was handed to arq: dispatch latency for metrics, and
-- what fairness is judged by (what the dispatcher chose, not when arq got to it).
ALTER TABLE bq_jobs ADD COLUMN dispatched_at timestamptz;
