-- Closures: counters, accumulators, memoization, currying, composition, shared upvalues, recursion.
-- Deterministic: prints the same bytes on every run. Scale with N (work grows about linearly).
N = N or 260

local function counter(start, step)
  local n = start
  return function() n = n + step; return n end,
         function() return n end
end

local function memoize(f)
  local cache, hits, misses = {}, 0, 0
  return function(k)
    local v = cache[k]
    if v == nil then
      misses = misses + 1
      v = f(k)
      cache[k] = v
    else
      hits = hits + 1
    end
    return v
  end, function() return hits, misses end
end

local function curry3(f)
  return function(a) return function(b) return function(c) return f(a, b, c) end end end
end

local function compose(...)
  local fs = { ... }
  return function(x)
    for i = #fs, 1, -1 do x = fs[i](x) end
    return x
  end
end

-- a bank of counters sharing one upvalue "total"
local function bank(k)
  local total = 0
  local accounts = {}
  for i = 1, k do
    local balance = 0
    accounts[i] = {
      deposit = function(x) balance = balance + x; total = total + x end,
      withdraw = function(x)
        if x > balance then return false end
        balance = balance - x; total = total - x; return true
      end,
      balance = function() return balance end,
    }
  end
  return accounts, function() return total end
end

for round = 1, N do
  -- counters
  local incs = {}
  for i = 1, 200 do incs[i] = { counter(i, round + i % 7) } end
  local s = 0
  for rep = 1, 300 do
    for i = 1, 200 do s = s + incs[i][1]() end
  end
  local last = 0
  for i = 1, 200 do last = last + incs[i][2]() end
  print(string.format("round %d counters sum=%d last=%d", round, s, last))

  -- memoized recursive functions
  local fib
  local mfib, fibstats = memoize(function(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end)
  fib = mfib
  local collatz
  local mcol, colstats = memoize(function(n)
    if n == 1 then return 0 end
    if n % 2 == 0 then return 1 + collatz(n // 2) end
    return 1 + collatz(3 * n + 1)
  end)
  collatz = mcol
  local best, bestn = 0, 0
  for n = 1, 6000 + 500 * (round % 20) do
    local c = collatz(n)
    if c > best then best, bestn = c, n end
  end
  local h, m = colstats()
  print(string.format("round %d fib(80)=%d collatz best %d at %d (hits %d misses %d)", round, fib(80), best, bestn, h, m))
  local fh, fm = fibstats()
  print(string.format("round %d fib memo hits %d misses %d", round, fh, fm))

  -- currying and composition
  local add3 = curry3(function(a, b, c) return a * 100 + b * 10 + c end)
  local acc = 0
  for a = 0, 9 do
    local fa = add3(a)
    for b = 0, 9 do
      local fb = fa(b)
      for c = 0, 9 do acc = acc + fb(c) * ((a + b + c + round) % 3) end
    end
  end
  local f = compose(function(x) return x + 1 end, function(x) return x * 3 end, function(x) return x - round end)
  local g = compose(f, f, f)
  local chain = {}
  for i = 1, 12 do chain[#chain + 1] = tostring(g(i)) end
  print(string.format("round %d curry acc=%d", round, acc), table.concat(chain, ","))

  -- shared upvalues
  local accounts, total = bank(300)
  local refused = 0
  for rep = 1, 40 do
    for i = 1, 300 do
      local a = accounts[i]
      a.deposit((i * rep + round) % 17)
      if not a.withdraw((i + rep * round) % 23) then refused = refused + 1 end
    end
  end
  local sum = 0
  for i = 1, 300 do sum = sum + accounts[i].balance() end
  print(string.format("round %d bank total=%d sum=%d refused=%d", round, total(), sum, refused))

  -- closures in a loop capture a fresh variable per iteration
  local fs = {}
  for i = 1, 1000 do fs[i] = function() return i * i + round end end
  local t = 0
  for i = 1000, 1, -1 do t = t + fs[i]() end
  print(string.format("round %d loop closures %d", round, t))

  -- deep recursion through closures
  local function ackermann(m, n)
    if m == 0 then return n + 1 end
    if n == 0 then return ackermann(m - 1, 1) end
    return ackermann(m - 1, ackermann(m, n - 1))
  end
  print(string.format("round %d ackermann(2,%d)=%d ackermann(3,4)=%d", round, round, ackermann(2, round), ackermann(3, 4)))
end
print("closures done")
