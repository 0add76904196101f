-- wrk script of benches/feast.sh: POST /get-online-features of driver_hourly_stats' 16 features,
-- `batch` ids per request replayed from a trace (one id a line), each connection from its own place.
-- Arguments (after --): TRACE BATCH. done() prints one WRKJSON line.
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
local ids, n, pos, batch, prefix, suffix
function init(args)
  batch = tonumber(args[2])
  ids, n = {}, 0
  for line in io.lines(args[1]) do n = n + 1; ids[n] = line end
  pos = (tid * 7919 * batch) % n
  local feats = {}
  for j = 0, 15 do feats[#feats + 1] = '"driver_hourly_stats:f' .. j .. '"' end
  prefix = '{"features":[' .. table.concat(feats, ",") .. '],"entities":{"driver_id":['
  suffix = ']}}'
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  local t = {}
  for i = 1, batch do t[i] = ids[((pos + i - 1) % n) + 1] end
  pos = (pos + batch) % n
  return wrk.format(nil, "/get-online-features", nil, prefix .. table.concat(t, ",") .. suffix)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
