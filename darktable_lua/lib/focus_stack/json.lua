--[[
    lib/focus_stack/json.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    JSON, enough for job manifests, progress lines and status files. Numbers never depend on
    the locale's decimal separator, in either direction.

    local json = require "lib/focus_stack/json"
    json.encode(value) -> text (objects with sorted keys, indented)
    json.decode(text) -> value, or nil and a message (null members are left out of objects)
    json.number(text) -> the number a JSON number literal stands for, or nil
    json.null, json.array_mt (setmetatable({}, json.array_mt) encodes as [])
]]

local json = {}

json.null = setmetatable({}, {__tostring = function() return "null" end})
json.array_mt = {}

local ESCAPES = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                 ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}

local UNESCAPES = {b = "\b", f = "\f", n = "\n", r = "\r", t = "\t",
                   ['"'] = '"', ["\\"] = "\\", ["/"] = "/"}

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode_number(n)
  if n ~= n or n == math.huge or n == -math.huge then return "null" end
  if math.type(n) == "integer" or (n == math.floor(n) and math.abs(n) < 2^53) then
    return string.format("%d", math.floor(n))
  end
  -- never trust the locale's decimal separator
  return (string.format("%.10g", n):gsub(",", "."))
end

function json.encode(v, indent)
  indent = indent or ""
  local t = type(v)
  if v == nil or v == json.null then return "null"
  elseif t == "boolean" then return v and "true" or "false"
  elseif t == "number" then return encode_number(v)
  elseif t == "string" then return encode_string(v)
  elseif t == "table" then
    local inner = indent .. "  "
    if v[1] ~= nil or next(v) == nil and getmetatable(v) == json.array_mt then
      local out = {}
      for _, item in ipairs(v) do out[#out + 1] = inner .. json.encode(item, inner) end
      if #out == 0 then return "[]" end
      return "[\n" .. table.concat(out, ",\n") .. "\n" .. indent .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local out = {}
    for _, k in ipairs(keys) do
      out[#out + 1] = inner .. encode_string(k) .. ": " .. json.encode(v[k], inner)
    end
    if #out == 0 then return "{}" end
    return "{\n" .. table.concat(out, ",\n") .. "\n" .. indent .. "}"
  end
  error("cannot encode " .. t)
end

-- a JSON number literal (or a plain decimal such as "2.8"), whatever the C locale says:
-- tonumber may follow a decimal-comma locale, so the digits are added up by hand then
function json.number(text)
  local n = tonumber(text)
  if n then return math.tointeger(n) or n end
  local sign, int, frac, exp = text:match("^(-?)(%d+)%.?(%d*)[eE]?([-+]?%d*)$")
  if not int then return nil end
  n = tonumber(int) + (frac ~= "" and tonumber(frac) / 10 ^ #frac or 0)
  if exp ~= "" then n = n * 10 ^ tonumber(exp) end
  if sign == "-" then n = -n end
  return n
end

function json.decode(s)
  local pos = 1
  local function fail(msg) error("bad JSON at " .. pos .. ": " .. msg, 0) end
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1; break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        if e == "u" then
          local cp = tonumber(s:sub(pos + 2, pos + 5), 16) or fail("bad \\u escape")
          pos = pos + 6
          if cp >= 0xD800 and cp <= 0xDBFF and s:sub(pos, pos + 1) == "\\u" then
            local lo = tonumber(s:sub(pos + 2, pos + 5), 16)
            if lo and lo >= 0xDC00 and lo <= 0xDFFF then
              cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
              pos = pos + 6
            end
          end
          out[#out + 1] = utf8.char(cp)
        elseif UNESCAPES[e] then
          out[#out + 1] = UNESCAPES[e]; pos = pos + 2
        else fail("bad escape") end
      else
        local stop = s:find('["\\]', pos) or #s + 1
        out[#out + 1] = s:sub(pos, stop - 1)
        pos = stop
      end
    end
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local obj = {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return obj end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail("expected key") end
        local k = str(); ws()
        if s:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        local v = value()
        if v ~= json.null then obj[k] = v end
        ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "}" then return obj elseif d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      local arr = setmetatable({}, json.array_mt)
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return arr end
      while true do
        arr[#arr + 1] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "]" then return arr elseif d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return json.null
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then fail("unexpected character") end
      pos = pos + #num
      return json.number(num) or fail("bad number")
    end
  end
  local ok, result = pcall(value)
  if not ok then return nil, result end
  return result
end

return json
