-- Strings: string.format (all the usual specifiers), gsub with function/table/string replacements,
-- patterns (find, match, gmatch, captures, frontier, balanced), concatenation, string.rep, byte/char,
-- pack/unpack, utf8, and io.write of numbers (integers, floats, huge, negative zero).
-- Deterministic: prints the same bytes on every run. Scale with N (work grows about linearly).
N = N or 1100

local words = { "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
  "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango" }

local function lcg(seed)
  local x = seed
  return function(n)
    x = (x * 1103515245 + 12345) % 2147483648
    return x % n
  end
end

local function sentence(rnd, n)
  local parts = {}
  for i = 1, n do
    local w = words[rnd(#words) + 1]
    if rnd(5) == 0 then w = w:upper() end
    parts[i] = w
  end
  return table.concat(parts, " ") .. ", " .. rnd(100000) .. " units at " .. rnd(1000) / 8 .. " each."
end

for round = 1, N do
  local rnd = lcg(round)

  -- string.format
  local out = {}
  for i = 1, 12 do
    local v = rnd(1000000) - 500000
    out[#out + 1] = string.format("%d|%5d|%-6d|%x|%X|%o|%+.3f|%10.4e|%g|%q|%s|%5.2s|%c|%%|%a",
      v, v % 1000, v % 77, math.abs(v), math.abs(v) * 3, math.abs(v) % 512, v / 7, v * 1.5e10, v / 3,
      "q\"" .. i .. "\n\0", tostring(v % 2 == 0), words[i % #words + 1], 65 + i % 26, 1 / (i + 1))
  end
  print(table.concat(out, "\n"))

  -- gsub with a function, a table and a pattern string; captures
  local text = {}
  for i = 1, 120 do text[i] = sentence(rnd, 8 + rnd(8)) end
  text = table.concat(text, "\n")
  local calls = 0
  local t1, n1 = text:gsub("%a+", function(w) calls = calls + 1; if #w > 5 then return w:sub(1, 3) .. "~" end end)
  local t2, n2 = text:gsub("(%d+)%.(%d+)", "%2.%1")
  local t3, n3 = text:gsub("%u+", { ALPHA = "A!", ECHO = "E!", GOLF = false })
  local t4, n4 = text:gsub("(%w+) (%w+)", "%2 %1", 50)
  local t5 = text:gsub("%f[%a]%a", string.upper)
  print(string.format("round %d gsub n=%d/%d/%d/%d calls=%d lens=%d/%d/%d/%d/%d", round, n1, n2, n3, n4, calls,
    #t1, #t2, #t3, #t4, #t5))
  print(t1:sub(1, 120))
  print(t2:sub(1, 120))
  print(t3:sub(1, 120))
  print(t5:sub(-120))

  -- find, match, gmatch, balanced and frontier patterns
  local counts = {}
  for w in text:gmatch("%a+") do
    local k = w:lower()
    counts[k] = (counts[k] or 0) + 1
  end
  local keys = {}
  for k in pairs(counts) do keys[#keys + 1] = k end
  table.sort(keys)
  local cs = {}
  for _, k in ipairs(keys) do cs[#cs + 1] = k .. "=" .. counts[k] end
  print("round " .. round .. " words " .. table.concat(cs, " "))
  local nested = "f(a(b)c(d(e)f)g)h(" .. string.rep("(x)", round % 10) .. ")"
  local b1, b2 = nested:find("%b()")
  local first, rest = text:match("^(%a+)%s+(.-)\n")
  local pos, hits = 1, 0
  while true do
    local s, e = text:find("units", pos, true)
    if not s then break end
    hits = hits + 1
    pos = e + 1
  end
  print(string.format("round %d find %d %d %s %s %d %s", round, b1, b2, nested:match("%b()", 2), first, hits, rest:sub(1, 30)))

  -- concatenation, rep, byte/char, reverse, pack/unpack, utf8
  local s = ""
  for i = 1, 300 do s = s .. string.char(97 + (i * round) % 26) end
  local r = string.rep(s, 20, "|")
  local bytes = 0
  for i = 1, #r, 7 do bytes = bytes + r:byte(i) end
  local packed = string.pack("<i4 i8 d z s1", round, -round * 1000003, round / 3, "zstr", "pstr")
  local a, b, c, d, e = string.unpack("<i4 i8 d z s1", packed)
  local u = utf8.char(72, 228, 8364, 128512, 955) .. round
  local ucodes = {}
  for _, cp in utf8.codes(u) do ucodes[#ucodes + 1] = cp end
  print(string.format("round %d concat %d rep %d bytes %d rev %s pack %d %s %d %d %.6f %s %s utf8 %d %d %s", round, #s, #r,
    bytes, s:reverse():sub(1, 10), #packed, packed:sub(1, 4):byte(1), a, b, c, d, e, utf8.len(u), #u,
    table.concat(ucodes, ",")))

  -- io.write formats numbers like Lua's own io library
  io.write("round ", round, " io.write ", 1.0, " ", 2, " ", -0.0, " ", math.huge, " ", -math.huge, " ", tostring(0 / 0 ~= 0 / 0), " ", 2 ^ 63, " ",
    math.mininteger, " ", 0.1, " ", 1 / 3, " ", round / 8, " ", 3.0 * round, "\n")
  io.stdout:write("round ", round, " stdout:write ", 7.5, " ", 7, "\n"):write("chained ", round, "\n")
end
print("strings done")
