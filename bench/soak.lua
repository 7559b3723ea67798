-- wrk script for the soak run: cycles through a fixed mix of requests and
-- checks every response by its body (each route of bench/apps/soak-* says
-- what it answers), so a wrong or truncated answer counts as a failure even
-- when its status is 200.
--
--   7 in 10   GET  /       -> "hello"
--   1 in 10   GET  /big    -> 1 MiB
--   1 in 10   GET  /slow   -> "slow" after 200 ms
--   1 in 10   POST /echo   (100 KiB body) -> "echo 102400"
--
-- done() prints one line, "SOAK {json}", which bench/bench.py reads.

local POST_SIZE = 102400
local BIG_SIZE = 1048576

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local payload = string.rep("p", POST_SIZE)
  local small = wrk.format("GET", "/")
  mix = {
    small, small, small, small, small, small, small,
    wrk.format("GET", "/big"),
    wrk.format("GET", "/slow"),
    wrk.format("POST", "/echo",
      { ["Content-Type"] = "application/octet-stream", ["Content-Length"] = tostring(POST_SIZE) },
      payload),
  }
  n = 0
  ok = 0
  bad_status = 0
  bad_body = 0
  k_small, k_big, k_slow, k_echo = 0, 0, 0, 0
  first_bad = ""
end

function request()
  n = n + 1
  return mix[(n - 1) % #mix + 1]
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad_status = bad_status + 1
    if first_bad == "" then first_bad = "status " .. status end
    return
  end
  if body == "hello" then
    k_small = k_small + 1
  elseif body == "slow" then
    k_slow = k_slow + 1
  elseif body == "echo " .. POST_SIZE then
    k_echo = k_echo + 1
  elseif #body == BIG_SIZE then
    k_big = k_big + 1
  else
    bad_body = bad_body + 1
    if first_bad == "" then first_bad = "body of " .. #body .. " bytes: " .. string.sub(body, 1, 40) end
    return
  end
  ok = ok + 1
end

function done(summary, latency, requests)
  local t = { ok = 0, bad_status = 0, bad_body = 0, small = 0, big = 0, slow = 0, echo = 0 }
  local first = ""
  for _, thread in ipairs(threads) do
    t.ok = t.ok + thread:get("ok")
    t.bad_status = t.bad_status + thread:get("bad_status")
    t.bad_body = t.bad_body + thread:get("bad_body")
    t.small = t.small + thread:get("k_small")
    t.big = t.big + thread:get("k_big")
    t.slow = t.slow + thread:get("k_slow")
    t.echo = t.echo + thread:get("k_echo")
    local f = thread:get("first_bad")
    if first == "" and f ~= "" then first = f end
  end
  first = first:gsub('[^%w %p]', '?')
  first = first:gsub('["\\]', "'")
  io.write(string.format(
    'SOAK {"ok": %d, "bad_status": %d, "bad_body": %d, "small": %d, "big": %d, "slow": %d, "echo": %d, "first_bad": "%s"}\n',
    t.ok, t.bad_status, t.bad_body, t.small, t.big, t.slow, t.echo, first))
end
