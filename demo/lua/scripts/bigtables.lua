-- Big tables: arrays and hashes of hundreds of thousands of entries, table.sort with comparators (total
-- orders only: Lua's sort is not stable and picks pivots at random on large inputs), table.concat,
-- table.insert/remove/move/unpack, integer and string keys, nested records, math.random with a fixed seed.
-- Deterministic: prints the same bytes on every run (string-keyed tables are never printed in pairs order).
-- Scale with N (the size of the big structures) and ROUNDS.
N = N or 200000
ROUNDS = ROUNDS or 4

math.randomseed(42)

local function checksum(t, n)
  local h = 0
  for i = 1, n or #t do h = (h * 31 + t[i]) % 4294967291 end
  return h
end

for round = 1, ROUNDS do
  -- a big array of random integers, sorted three ways
  local a = {}
  for i = 1, N do a[i] = math.random(1, 1000000000) end
  print(string.format("round %d array n=%d first=%d last=%d sum=%d", round, #a, a[1], a[N], checksum(a)))
  local b = table.move(a, 1, N, 1, {})
  table.sort(b)
  print(string.format("round %d sorted asc min=%d median=%d max=%d h=%d", round, b[1], b[N // 2], b[N], checksum(b)))
  -- descending, ties broken by the value's index in a (a total order)
  local idx = {}
  for i = 1, N do idx[i] = i end
  table.sort(idx, function(x, y)
    local ax, ay = a[x] % 1000, a[y] % 1000
    if ax ~= ay then return ax > ay end
    return x < y
  end)
  print(string.format("round %d sorted by key h=%d top=%d,%d,%d", round, checksum(idx), idx[1], idx[2], idx[3]))
  for i = 1, 4000, 10 do
    print(string.format("  idx[%d]=%d a=%d key=%d", i, idx[i], a[idx[i]], a[idx[i]] % 1000))
  end

  -- a hash with integer keys (sparse) and one with string keys
  local sparse, nsparse = {}, 0
  for i = 1, N // 2 do
    local k = a[i] % (N * 10)
    if sparse[k] == nil then nsparse = nsparse + 1 end
    sparse[k] = (sparse[k] or 0) + i
  end
  local strkeys, keys = {}, {}
  for i = 1, N // 4 do
    local k = "k" .. (a[i] % 50000)
    if strkeys[k] == nil then keys[#keys + 1] = k end
    strkeys[k] = (strkeys[k] or 0) + 1
  end
  table.sort(keys)
  local parts = {}
  for i = 1, #keys, #keys // 400 do parts[#parts + 1] = keys[i] .. "=" .. strkeys[keys[i]] end
  local ssum = 0
  for _, v in pairs(sparse) do ssum = ssum + v end -- sums do not depend on the traversal order
  print(string.format("round %d sparse %d keys sum %d; string keys %d", round, nsparse, ssum, #keys))
  print("  " .. table.concat(parts, " "))

  -- records: build, sort by two fields, group, concat
  local recs = {}
  for i = 1, N // 4 do
    recs[i] = { id = i, group = "g" .. (a[i] % 37), score = a[i] % 10007, tags = { a[i] % 3, a[i] % 5 } }
  end
  table.sort(recs, function(x, y)
    if x.group ~= y.group then return x.group < y.group end
    if x.score ~= y.score then return x.score > y.score end
    return x.id < y.id
  end)
  local groups, order = {}, {}
  for _, r in ipairs(recs) do
    local g = groups[r.group]
    if not g then g = { n = 0, best = r.id, tags = 0 }; groups[r.group] = g; order[#order + 1] = r.group end
    g.n = g.n + 1
    g.tags = g.tags + r.tags[1] * 10 + r.tags[2]
  end
  for i = 1, #order do
    local g = groups[order[i]]
    print(string.format("  group %s n=%d best=%d tags=%d", order[i], g.n, g.best, g.tags))
  end

  -- insert/remove at both ends and in the middle, unpack, concat of a big array of strings
  local q = {}
  for i = 1, 2000 do table.insert(q, i) end
  for i = 1, 500 do table.insert(q, 1, -i) end
  for i = 1, 300 do table.insert(q, #q // 2, i * 1000) end
  local removed = 0
  for i = 1, 400 do removed = removed + table.remove(q, (i * 7) % #q + 1) end
  for i = 1, 100 do removed = removed + table.remove(q) end
  local x1, x2, x3 = table.unpack(q, 10, 12)
  local strs = {}
  for i = 1, N // 2 do strs[i] = tostring(a[i] % 1000) end
  local big = table.concat(strs, ",")
  print(string.format("round %d queue n=%d removed=%d unpack=%d,%d,%d concat len=%d head=%s", round, #q, removed, x1, x2, x3,
    #big, big:sub(1, 40)))

  -- a 2-D grid (tables of tables), a few relaxation sweeps
  local W = math.floor(math.sqrt(N / 2))
  local grid = {}
  for y = 1, W do
    local row = {}
    for x = 1, W do row[x] = (a[(y - 1) * W + x] % 100) end
    grid[y] = row
  end
  for _ = 1, 3 do
    for y = 2, W - 1 do
      local up, row, down = grid[y - 1], grid[y], grid[y + 1]
      for x = 2, W - 1 do row[x] = (up[x] + down[x] + row[x - 1] + row[x + 1]) // 4 end
    end
  end
  local gs = 0
  for y = 1, W do gs = gs + checksum(grid[y]) end
  print(string.format("round %d grid %dx%d h=%d centre=%d", round, W, W, gs, grid[W // 2][W // 2]))
end
print("bigtables done")
