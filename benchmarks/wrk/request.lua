-- wrk script for benchmarks/http.py: the request comes from the environment, so one script
-- serves every scenario, and the summary is printed as one JSON line the benchmark parses.
--   BQ_METHOD  GET (default) or POST
--   BQ_TOKEN   a bearer token, sent as Authorization (never printed)
--   BQ_BODY    a file whose contents are the JSON body
--   BQ_PATHS   a file of request paths, one a line, requested round robin (each wrk thread
--              starting at a different line); without it, the URL's path
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

-- Round robin over BQ_PATHS: every request is formatted once, in `init` (per thread), and
-- `request` only picks the next. Without BQ_PATHS no `request` function is defined, so wrk sends
-- its one static request with no Lua call per request.
local paths_file = os.getenv("BQ_PATHS")
if paths_file and paths_file ~= "" then
  local thread_no = 0
  setup = function(thread)
    thread:set("offset", thread_no * 7919)
    thread_no = thread_no + 1
  end

  local prepared = {}
  local n = 0
  init = function(args)
    for line in io.lines(paths_file) do
      if line ~= "" then prepared[#prepared + 1] = wrk.format(nil, line) end
    end
    n = offset or 0
  end

  request = function()
    n = n + 1
    return prepared[(n % #prepared) + 1]
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BQ_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
