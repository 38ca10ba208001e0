-- Shared by the wrk scenarios: thread ids, API-key rotation, a request quota, and a JSON summary.
-- wrk runs one Lua state per thread; setup() runs in the main state and numbers the threads.
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

keys = {}
counter = 0
quota = 0

function common_init(key_list, per_thread_quota)
  for k in string.gmatch(key_list, "[^,]+") do
    table.insert(keys, k)
  end
  quota = tonumber(per_thread_quota)
end

-- Returns the headers for the next request, or stops the thread when its quota is spent.
function next_headers()
  counter = counter + 1
  if counter > quota then
    wrk.thread:stop()
  end
  return {["Authorization"] = "Bearer " .. keys[(counter % #keys) + 1], ["Content-Type"] = "application/json"}
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50":%.1f,"p95":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean))
end
