-- Replays pre-signed Nylas webhook deliveries for bench.webhook_ingest, each one once.
--
--   wrk -t 1 -c 64 -d 15s --latency -s bench/wrk_replay.lua URL -- POOL
--
-- POOL has one delivery a line: its X-Nylas-Signature, a space, then the JSON body (which has
-- no newline). Every request is formatted in init(), before wrk starts its clock, so request()
-- only hands out the next one. Should wrk ask for more requests than the pool holds, it starts
-- again from the first (those are duplicates, which the service answers 200 without storing);
-- done() reports how many were asked for, and the benchmark treats a pool that ran out as broken.

local requests = {}
local pool = 0
sent = 0 -- a global, so that done() can read it from the thread with thread:get()

function init(args)
  local file = assert(io.open(args[1], "rb"))
  for line in file:lines() do
    local space = line:find(" ", 1, true)
    if space then
      pool = pool + 1
      requests[pool] = wrk.format("POST", nil, {
        ["Content-Type"] = "application/json",
        ["X-Nylas-Signature"] = line:sub(1, space - 1),
      }, line:sub(space + 1))
    end
  end
  file:close()
  assert(pool > 0, "the pool of deliveries is empty")
  size = pool
end

function request()
  sent = sent + 1
  return requests[(sent - 1) % pool + 1]
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local asked, size = 0, 0
  for _, thread in ipairs(threads) do
    asked = asked + thread:get("sent")
    size = size + thread:get("size")
  end
  local e = summary.errors
  io.write(string.format(
    "replay: sent %d pool %d requests %d non_2xx %d connect %d read %d write %d timeout %d\n",
    asked, size, summary.requests, e.status, e.connect, e.read, e.write, e.timeout
  ))
end
