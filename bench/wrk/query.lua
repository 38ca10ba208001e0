-- GET /v1/facts?entity=<a random seeded entity>.
-- args: <url-encoded entity prefix> <number of seeded entities> <comma-separated API keys> <quota per thread>
local prefix, entities

function init(args)
  prefix = args[1]
  entities = tonumber(args[2])
  common_init(args[3], args[4])
  math.randomseed(tid * 7919 + 1)
end

function request()
  local headers = next_headers()
  headers["Content-Type"] = nil
  return wrk.format("GET", "/v1/facts?entity=" .. prefix .. math.random(0, entities - 1), headers)
end
