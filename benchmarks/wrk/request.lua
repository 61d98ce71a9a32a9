-- wrk script for benchmarks/http.py: the request comes from the environment, so one script
-- serves every scenario, and the summary is printed as one JSON line the benchmark parses.
--   BQ_METHOD  GET (default) or POST
--   BQ_TOKEN   a bearer token, sent as Authorization (never printed)
--   BQ_BODY    a file whose contents are the JSON body
wrk.method = os.getenv("BQ_METHOD") or "GET"
local token = os.getenv("BQ_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
local body_file = os.getenv("BQ_BODY")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BQ_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
