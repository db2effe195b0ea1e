-- Coroutines: generators, producer/consumer pipelines, permutations, two-way values, status, close, yields
-- across pcall inside coroutines, and the main chunk's own view of itself.
-- Deterministic: prints the same bytes on every run. Scale with N (work grows about linearly).
N = N or 360

-- the main chunk is the main thread (ferry-lua runs it in a coroutine but must answer the same)
local _, ismain = coroutine.running()
print("main chunk: ismain", ismain, "yieldable", coroutine.isyieldable())
print("yield outside a coroutine:", pcall(coroutine.yield, 1))

local function range(a, b, step)
  return coroutine.wrap(function()
    for i = a, b, step or 1 do coroutine.yield(i) end
  end)
end

local function map(f, gen)
  return coroutine.wrap(function()
    for v in gen do coroutine.yield(f(v)) end
  end)
end

local function filter(p, gen)
  return coroutine.wrap(function()
    for v in gen do if p(v) then coroutine.yield(v) end end
  end)
end

local function take(n, gen)
  return coroutine.wrap(function()
    for v in gen do
      if n <= 0 then return end
      n = n - 1
      coroutine.yield(v)
    end
  end)
end

-- primes with a chain of filtering coroutines (a sieve of coroutines)
local function primes(limit)
  return coroutine.wrap(function()
    local gen = range(2, limit)
    while true do
      local p = gen()
      if not p then return end
      coroutine.yield(p)
      local prev = gen
      gen = filter(function(x) return x % p ~= 0 end, prev)
    end
  end)
end

-- permutations by recursive generation
local function permgen(a, n)
  n = n or #a
  if n <= 1 then
    coroutine.yield(a)
  else
    for i = 1, n do
      a[n], a[i] = a[i], a[n]
      permgen(a, n - 1)
      a[n], a[i] = a[i], a[n]
    end
  end
end

local function permutations(a)
  local co = coroutine.create(function() permgen(a) end)
  return function()
    local ok, res = coroutine.resume(co)
    return ok and res or nil
  end
end

-- producer / consumer with a bounded buffer, both as coroutines, plus two-way values
local function producer(count, seed)
  return coroutine.create(function(ack)
    local x = seed
    for i = 1, count do
      x = (x * 1103515245 + 12345) % 2147483648
      ack = coroutine.yield(i, x % 1000)
      assert(ack == i, "bad ack")
    end
    return "eof"
  end)
end

local function consumer(prod)
  local sum, n, maxv = 0, 0, -1
  local ok, i, v = coroutine.resume(prod)
  while coroutine.status(prod) == "suspended" do
    sum = sum + v; n = n + 1
    if v > maxv then maxv = v end
    ok, i, v = coroutine.resume(prod, i)
    assert(ok)
  end
  return sum, n, maxv, i
end

for round = 1, N do
  -- generator pipeline
  local total, count = 0, 0
  for v in take(3000, filter(function(x) return x % 3 ~= 0 end, map(function(x) return x * x + round end, range(1, 100000)))) do
    total = total + v; count = count + 1
  end
  print(string.format("round %d pipeline count=%d total=%d", round, count, total))

  -- sieve (one nested coroutine per prime found: keep the limit small, the C stack bounds the nesting)
  local ps, last, limit = 0, 0, 60 + round % 40
  for p in primes(limit) do ps = ps + 1; last = p end
  print(string.format("round %d primes up to %d: %d, last %d", round, limit, ps, last))

  -- permutations of 7 elements (5040), checksum of their order
  local h, np = 0, 0
  for p in permutations({ 1, 2, 3, 4, 5, 6, 7 }) do
    np = np + 1
    local v = 0
    for i = 1, #p do v = v * 8 + p[i] end
    h = (h * 31 + v + round) % 1000000007
  end
  print(string.format("round %d permutations %d hash %d", round, np, h))

  -- producer / consumer
  local sum, n, maxv, eof = consumer(producer(5000, round))
  print(string.format("round %d consumer n=%d sum=%d max=%d end=%s", round, n, sum, maxv, tostring(eof)))

  -- status, close, errors inside coroutines, yields across pcall
  local co = coroutine.create(function(a)
    local r = 0
    for i = 1, 200 do
      local ok, err = pcall(function()
        local got = coroutine.yield(i + a)
        if got % 50 == 0 then error("bad value " .. got, 0) end
        r = r + got
      end)
      if not ok then r = r + 1000 end
    end
    return r
  end)
  local results, v = {}, round
  local ok, x = coroutine.resume(co, v)
  while coroutine.status(co) == "suspended" do
    ok, x = coroutine.resume(co, x + 1)
  end
  results[#results + 1] = tostring(ok) .. ":" .. tostring(x)
  local dead = coroutine.create(function() error({ code = round }) end)
  local ok2, e2 = coroutine.resume(dead)
  results[#results + 1] = tostring(ok2) .. ":" .. type(e2) .. ":" .. e2.code .. ":" .. coroutine.status(dead)
  local closable = coroutine.create(function()
    local t <close> = setmetatable({}, { __close = function() results[#results + 1] = "closed" end })
    coroutine.yield(1)
  end)
  coroutine.resume(closable)
  local closed = coroutine.close(closable)
  results[#results + 1] = tostring(closed) .. ":" .. coroutine.status(closable)
  local inner = coroutine.wrap(function()
    local _, m = coroutine.running()
    coroutine.yield(tostring(m) .. "/" .. tostring(coroutine.isyieldable()))
  end)
  results[#results + 1] = inner()
  print(string.format("round %d misc %s", round, table.concat(results, " ")))

  -- many short-lived coroutines
  local made = 0
  for i = 1, 2000 do
    local c = coroutine.wrap(function(a, b) local s = coroutine.yield(a + b); return s * 2 end)
    made = made + c(i, round) + c(i)
  end
  print(string.format("round %d short-lived %d", round, made))
end
print("coroutines done")
