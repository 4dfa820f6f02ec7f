-- wrk script: one benchmark scenario against one server (used by bench/run.sh).
--
-- Arguments after wrk's "--", as key=value:
--   mode=get|miss|put|mix  get: GET random existing keys "key<i>"; miss: GET "miss<i>" (never
--                          written); put: PUT random "key<i>"; mix: GET, or PUT with putpct %
--   get=/v1/  gsuf=        GET path is get .. "key<i>" .. gsuf   (webdis: get=/GET/ gsuf=.txt)
--   put=/v1/               PUT path is put .. "key<i>", body = vsize bytes (webdis: put=/SET/)
--   keys=100000 vsize=100 putpct=20 seed=1
--
-- Requests are built once in init() so the client spends its CPU on sending, not on Lua.
-- The key sequence is seeded, so every server receives the same sequence of requests.
-- done() prints one line "BENCHJSON {...}" (latencies in microseconds) for bench/report.py.

local cfg = { mode = "get", get = "/v1/", gsuf = "", put = "/v1/", keys = "100000",
              vsize = "100", putpct = "20", seed = "1" }
local gets, puts, n, mode, putpct
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end

function init(args)
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k then cfg[k] = v else error("bad argument " .. a .. " (want key=value)") end
  end
  mode = cfg.mode
  n = tonumber(cfg.keys)
  putpct = tonumber(cfg.putpct)
  math.randomseed(tonumber(cfg.seed) * 7919 + (tid or 1))
  local value = string.rep("v", tonumber(cfg.vsize))
  gets, puts = {}, {}
  if mode == "get" or mode == "miss" or mode == "mix" then
    local stem = (mode == "miss") and "miss" or "key"
    for i = 1, n do gets[i] = wrk.format("GET", cfg.get .. stem .. i .. cfg.gsuf, nil, nil) end
  elseif mode ~= "put" then
    error("unknown mode " .. mode)
  end
  if mode == "put" or mode == "mix" then
    for i = 1, n do puts[i] = wrk.format("PUT", cfg.put .. "key" .. i, nil, value) end
  end
end

function request()
  local i = math.random(n)
  if mode == "put" then return puts[i] end
  if mode == "mix" and math.random(100) <= putpct then return puts[i] end
  return gets[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.1f,' ..
    '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes, summary.requests / secs,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
