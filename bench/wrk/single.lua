-- POST /v1/facts, every request a new fact (mirrors bench/workload.py write_fact).
-- args: <run tag> <comma-separated API keys> <request quota per thread>
local run

function init(args)
  run = args[1]
  common_init(args[2], args[3])
end

local function value(i, k)
  local kind = (i + k) % 10
  if kind < 6 then
    return string.format('{"type":"string","v":"observation %d-%d: the user prefers option %d"}', i, k, (i * 7 + k) % 13)
  elseif kind < 8 then
    return string.format('{"type":"number","v":%d}', (i * 31 + k) % 100000)
  elseif kind == 8 then
    return ((i + k) % 2 == 0) and '{"type":"boolean","v":true}' or '{"type":"boolean","v":false}'
  end
  return string.format('{"type":"ref","v":"stigmem://bench/doc/d%d"}', (i * 13 + k) % 50000)
end

function request()
  local headers = next_headers()
  local i = tid * 100000000 + counter
  local k = i % 10
  local body = string.format(
    '{"entity":"stigmem://bench/user/%s-%d","relation":"memory:r%d","value":%s,' ..
    '"source":"stigmem://bench/agent/a%d","confidence":%s,"scope":"%s"}',
    run, math.floor(i / 10), k, value(i, k), i % 50, (i % 3 == 0) and "0.9" or "1.0",
    (i % 5 == 0) and "team" or "local")
  return wrk.format("POST", "/v1/facts", headers, body)
end
