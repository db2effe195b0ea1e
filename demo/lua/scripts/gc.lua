-- The garbage collector, constantly: collectgarbage("step") all the time, mountains of garbage (tables,
-- strings, closures, coroutines), weak tables (weak keys, weak values, both: ephemerons), __gc finalizers
-- that resurrect, switches between incremental and generational modes.
-- Deterministic: only what does not depend on when the collector runs is printed (finalizer counts and
-- weak-table sizes after full collections, sums that do not depend on traversal order).
-- Scale with N (rounds) and M (garbage per round).
N = N or 320
M = M or 6000

local finalized, resurrected, kept = 0, 0, {}
local Fin = { __gc = function(o)
  finalized = finalized + 1
  if o.id % 97 == 0 then -- resurrect a few: they stay reachable from 'kept'
    resurrected = resurrected + 1
    kept[#kept + 1] = o
  end
end }

local function garbage(round, n)
  local made = 0
  for i = 1, n do
    local t = { i, tostring(i * round), { i }, function() return i end }
    made = made + #t[2]
    if i % 3 == 0 then
      local s = string.rep("x", i % 50) .. i
      made = made + #s
    end
    if i % 50 == 0 then
      local co = coroutine.wrap(function(a) coroutine.yield(a + 1) end)
      made = made + co(i)
    end
    if i % 4 == 0 then setmetatable({ id = i + round }, Fin) end
    if i % 100 == 0 then collectgarbage("step") end
  end
  return made
end

local modes = { "incremental", "generational" }

for round = 1, N do
  collectgarbage(modes[round % 2 + 1])
  local made = garbage(round, M)

  -- weak tables: keys and values that are only reachable through them vanish at the next full collection
  local wk = setmetatable({}, { __mode = "k" })
  local wv = setmetatable({}, { __mode = "v" })
  local wkv = setmetatable({}, { __mode = "kv" })
  local anchors = {}
  for i = 1, 2000 do
    local k, v = {}, { i }
    wk[k] = i
    wv[i] = v
    wkv[k] = v
    if i % 5 == 0 then anchors[#anchors + 1] = k end
    if i % 7 == 0 then anchors[#anchors + 1] = v end
    if i % 10 == 0 then collectgarbage("step") end
  end
  -- an ephemeron: the value refers to its own key, the entry still goes when the key is unreachable
  local eph = setmetatable({}, { __mode = "k" })
  for i = 1, 500 do
    local k = { i }
    eph[k] = { k, i }
    if i % 25 == 0 then anchors[#anchors + 1] = k end
  end
  -- strings as weak values are not collected (they are values, not objects)
  local ws = setmetatable({}, { __mode = "v" })
  for i = 1, 100 do ws[i] = "s" .. i end

  collectgarbage()
  collectgarbage()
  local nk, sk, nv, nkv, ne, ns = 0, 0, 0, 0, 0, 0
  for _, v in pairs(wk) do nk = nk + 1; sk = sk + v end
  for _ in pairs(wv) do nv = nv + 1 end
  for _ in pairs(wkv) do nkv = nkv + 1 end
  for _ in pairs(eph) do ne = ne + 1 end
  for _ in pairs(ws) do ns = ns + 1 end
  print(string.format("round %d made=%d finalized=%d resurrected=%d kept=%d weak k=%d (sum %d) v=%d kv=%d eph=%d str=%d anchors=%d",
    round, made, finalized, resurrected, #kept, nk, sk, nv, nkv, ne, ns, #anchors))

  -- drop the resurrected objects again; their finalizers do not run a second time
  if round % 5 == 0 then
    kept = {}
    collectgarbage()
    print(string.format("round %d dropped resurrected, finalized=%d", round, finalized))
  end

  -- constant stepping while building and discarding a linked list
  local list
  for i = 1, M do
    list = { next = (i % 1000 ~= 1) and list or nil, v = i }
    if i % 10 == 0 then collectgarbage("step", 1) end
  end
  local len, sum = 0, 0
  while list do len = len + 1; sum = sum + list.v; list = list.next end
  print(string.format("round %d list len=%d sum=%d running=%s", round, len, sum, tostring(collectgarbage("isrunning"))))
end
collectgarbage()
collectgarbage()
print(string.format("gc done: finalized=%d resurrected=%d", finalized, resurrected))
