-- Metatables: __index (methods, inheritance, defaults), __newindex (proxies, read-only), arithmetic and
-- comparison metamethods (__add __sub __mul __unm __eq __lt __le __concat __len), __tostring, __call,
-- __close, and __gc with collectgarbage (finalizers only counted, checked after full collections).
-- Deterministic: prints the same bytes on every run. Scale with N (work grows about linearly).
N = N or 280

-- a 2-D vector class
local Vec = {}
Vec.__index = Vec
local function vec(x, y) return setmetatable({ x = x, y = y }, Vec) end
Vec.__add = function(a, b) return vec(a.x + b.x, a.y + b.y) end
Vec.__sub = function(a, b) return vec(a.x - b.x, a.y - b.y) end
Vec.__mul = function(a, b)
  if type(a) == "number" then return vec(a * b.x, a * b.y) end
  if type(b) == "number" then return vec(a.x * b, a.y * b) end
  return a.x * b.x + a.y * b.y
end
Vec.__unm = function(a) return vec(-a.x, -a.y) end
Vec.__eq = function(a, b) return a.x == b.x and a.y == b.y end
Vec.__lt = function(a, b) return a.x < b.x or (a.x == b.x and a.y < b.y) end
Vec.__le = function(a, b) return not (b < a) end
Vec.__len = function(a) return math.abs(a.x) + math.abs(a.y) end
Vec.__tostring = function(a) return "(" .. a.x .. "," .. a.y .. ")" end
Vec.__concat = function(a, b) return tostring(a) .. tostring(b) end
function Vec:rot() return vec(-self.y, self.x) end

-- inheritance: Animal <- Dog <- Puppy, with a method cache counter through __index functions
local lookups = 0
local Animal = { kind = "animal", legs = 4 }
Animal.__index = Animal
function Animal.new(name, cls) return setmetatable({ name = name }, cls or Animal) end
function Animal:describe() return self.name .. " the " .. self.kind .. " (" .. self.legs .. " legs)" end
function Animal:speak() return "..." end
local Dog = setmetatable({ kind = "dog" }, { __index = function(_, k) lookups = lookups + 1; return Animal[k] end })
Dog.__index = Dog
function Dog:speak() return "woof" end
local Puppy = setmetatable({ kind = "puppy" }, { __index = Dog })
Puppy.__index = Puppy
function Puppy:speak() return Dog.speak(self) .. "!" end

-- a proxy that logs writes (__newindex) and reads with defaults (__index), plus a read-only view
local function tracked(defaults)
  local store, writes = {}, 0
  local proxy = setmetatable({}, {
    __index = function(_, k) local v = store[k]; if v == nil then return defaults[k] end; return v end,
    __newindex = function(_, k, v) writes = writes + 1; store[k] = v end,
    __len = function() return #store end,
    __call = function(_, k) return store[k] ~= nil end,
  })
  return proxy, function() return writes end
end
local function readonly(t)
  return setmetatable({}, { __index = t, __newindex = function(_, k) error("read-only: " .. tostring(k), 2) end })
end

-- a class with __call as a constructor and __gc counting finalizations
local finalized, finalized_sum = 0, 0
local Resource = {}
Resource.__index = Resource
Resource.__gc = function(r) finalized = finalized + 1; finalized_sum = finalized_sum + r.id end
setmetatable(Resource, { __call = function(cls, id) return setmetatable({ id = id, data = { id, id * 2 } }, cls) end })
local created = 0
local function make_garbage(n, base)
  for i = 1, n do
    local r = Resource(base + i)
    created = created + 1
    r.data[3] = r
  end
end

for round = 1, N do
  -- vectors: arithmetic, comparisons, sorting with __lt
  local vs = {}
  local seed = round
  for i = 1, 3000 do
    seed = (seed * 16807) % 2147483647
    vs[i] = vec(seed % 1000 - 500, (seed // 1000) % 1000 - 500)
  end
  local acc = vec(0, 0)
  local dot = 0
  for i = 1, #vs - 1 do
    acc = acc + vs[i] - vs[i + 1] * 2 + (-vs[i]):rot()
    dot = dot + vs[i] * vs[i + 1]
  end
  local eqs, lts, les, len = 0, 0, 0, 0
  for i = 1, #vs - 1 do
    if vs[i] == vs[i + 1] then eqs = eqs + 1 end
    if vs[i] < vs[i + 1] then lts = lts + 1 end
    if vs[i] <= vs[i + 1] then les = les + 1 end
    len = len + #vs[i]
  end
  local sorted = {}
  for i = 1, 600 do sorted[i] = vs[i] end
  table.sort(sorted, function(a, b) return a < b end) -- ties are equal vectors: any order prints the same
  local parts = {}
  for i = 1, 600, 75 do parts[#parts + 1] = tostring(sorted[i]) end
  print(string.format("round %d vec acc=%s dot=%d eq=%d lt=%d le=%d len=%d", round, tostring(acc), dot, eqs, lts, les, len))
  print(string.format("round %d sorted %s %s", round, table.concat(parts, " "), vs[1] .. vs[2]))

  -- inheritance
  local zoo = {}
  for i = 1, 2000 do
    local cls = (i % 3 == 0) and Puppy or (i % 3 == 1) and Dog or Animal
    zoo[i] = Animal.new("n" .. i, cls)
  end
  local speak, descr = 0, 0
  for i = 1, #zoo do
    speak = speak + #zoo[i]:speak()
    descr = descr + #zoo[i]:describe()
  end
  print(string.format("round %d zoo speak=%d describe=%d lookups=%d last=%s", round, speak, descr, lookups, zoo[#zoo]:describe()))

  -- proxies
  local p, writes = tracked({ colour = "red", size = 0 })
  for i = 1, 3000 do
    p[i] = i * round
    if i % 7 == 0 then p.size = p.size + 1 end
  end
  local ro = readonly({ a = 1 })
  local ok, err = pcall(function() ro.b = 2 end)
  print(string.format("round %d proxy len=%d writes=%d size=%d colour=%s has5=%s has0=%s ro=%s/%s", round, #p, writes(),
    p.size, p.colour, tostring(p(5)), tostring(p(0)), tostring(ok), err))

  -- to-be-closed variables
  local log = {}
  do
    local a <close> = setmetatable({}, { __close = function() log[#log + 1] = "a" end })
    local b <close> = setmetatable({}, { __close = function(_, e) log[#log + 1] = "b" .. tostring(e) end })
    log[#log + 1] = "body"
  end
  local okc, errc = pcall(function()
    local c <close> = setmetatable({}, { __close = function(_, e) log[#log + 1] = "c:" .. tostring(e) end })
    error("E" .. round, 0)
  end)
  print(string.format("round %d close %s %s %s", round, table.concat(log, ","), tostring(okc), errc))

  -- finalizers: garbage with __gc, counted only after full collections (the count is then exact)
  make_garbage(2000, round * 100000)
  collectgarbage()
  collectgarbage()
  print(string.format("round %d gc created=%d finalized=%d sum=%d", round, created, finalized, finalized_sum))
end
print("metatables done")
