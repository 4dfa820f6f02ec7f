-- wrk script: PUT key1..keyN once each (vsize-byte value) as fast as the connections allow,
-- then end wrk at once (wrk itself would keep running for its whole -d).
--
-- Run it with ONE wrk thread (-t1): the count below is per thread.
-- Arguments after "--", as key=value: put=/v1/ keys=100000 vsize=100 conns=<wrk -c>
--
-- wrk keeps one request in flight per connection, so once keys + conns responses have come
-- back every one of the first `keys` requests has been answered; the extra requests re-PUT
-- the first keys with the same value. Prints "PREFILL_DONE responses=N bad=N" and exits 0,
-- or 3 if any response was not 2xx. A request lost to a reconnect is not retried: check the
-- server's key count afterwards (bench/run.sh does).

local cfg = { put = "/v1/", keys = "100000", vsize = "100", conns = "64" }
local n, target, value
local issued, answered, bad = 0, 0, 0

function init(args)
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k then cfg[k] = v else error("bad argument " .. a .. " (want key=value)") end
  end
  n = tonumber(cfg.keys)
  target = n + tonumber(cfg.conns)
  value = string.rep("v", tonumber(cfg.vsize))
end

function request()
  issued = issued + 1
  return wrk.format("PUT", cfg.put .. "key" .. (((issued - 1) % n) + 1), nil, value)
end

function response(status, headers, body)
  answered = answered + 1
  if status < 200 or status > 299 then
    bad = bad + 1
    if bad <= 5 then io.stderr:write("prefill: HTTP ", status, " ", tostring(body), "\n") end
  end
  if answered >= target then
    io.write(string.format("PREFILL_DONE responses=%d bad=%d\n", answered, bad))
    io.flush()
    os.exit(bad == 0 and 0 or 3)
  end
end
