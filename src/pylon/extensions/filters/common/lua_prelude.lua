-- Envoy's Lua stream API, as Lua tables over pylon's bridge (Python functions that take and return plain values).
-- Waiting (for a body, trailers, an httpCall's answer) is a coroutine.yield back to pylon, which resumes the
-- script when what it waits for is there: Python cannot yield a Lua coroutine, so every wait happens here.
local bridge = ...
local yield = coroutine.yield
local raw_pairs = pairs
local setmetatable, getmetatable, error, type, tostring = setmetatable, getmetatable, error, type, tostring

-- LuaJIT as Envoy builds it (LUA52COMPAT) honours __pairs, which headers iteration uses.
local function pairs(t)
  local mt = getmetatable(t)
  if mt and mt.__pairs then return mt.__pairs(t) end
  return raw_pairs(t)
end

local function unsupported(kind, name)
  return function()
    error(kind .. ":" .. name .. "() is not supported by pylon's Lua filter", 2)
  end
end

-- A class whose unknown methods raise an error naming them when called (never a silent nil).
local function class(kind)
  local methods = {}
  methods.__index = function(_, key)
    local m = rawget(methods, key)
    if m ~= nil then return m end
    if type(key) == "string" and key:sub(1, 1) ~= "_" then return unsupported(kind, key) end
    return nil
  end
  return methods
end

local function flatten(headers)
  local flat = {}
  for k, v in pairs(headers) do
    if type(v) == "table" then
      for _, one in ipairs(v) do flat[#flat + 1] = tostring(k); flat[#flat + 1] = tostring(one) end
    else
      flat[#flat + 1] = tostring(k); flat[#flat + 1] = tostring(v)
    end
  end
  return flat
end

-- As in Envoy, headers and body objects die when the script waits (for a body, trailers, an httpCall): a script
-- must ask its handle for them again afterwards. `scope` is the handle's counter of waits.
local function scoped(object, handle)
  object._scope = handle._scope
  object._at = handle._scope.n
  return object
end

local function live(object)
  local scope = object._scope
  if scope ~= nil and scope.n ~= object._at then error("object used outside of proper scope", 3) end
  return object
end

-------------------------------------------------------------------- headers and trailers
local Headers = class("headers")
function Headers:get(name) return bridge.header_get(live(self)._id, self._which, name) end
function Headers:getAtIndex(name, index) return bridge.header_at(live(self)._id, self._which, name, index) end
function Headers:getNumValues(name) return bridge.header_count(live(self)._id, self._which, name) end
function Headers:add(name, value) bridge.header_edit(live(self)._id, self._which, "add", name, tostring(value)) end
function Headers:replace(name, value)
  bridge.header_edit(live(self)._id, self._which, "replace", name, tostring(value))
end
function Headers:remove(name) bridge.header_edit(live(self)._id, self._which, "remove", name, "") end
Headers.__pairs = function(self)
  live(self)
  local list = bridge.header_list(self._id, self._which)
  local i = -1
  return function()
    i = i + 2
    if list[i] ~= nil then return list[i], list[i + 1] end
  end, self, nil
end

-------------------------------------------------------------------- buffers
local Buffer = class("buffer")
function Buffer:length() return bridge.body_length(live(self)._id) end
function Buffer:getBytes(index, length) return bridge.body_bytes(live(self)._id, index, length) end
function Buffer:setBytes(data) bridge.body_set(live(self)._id, tostring(data)) end

-------------------------------------------------------------------- metadata and stream info
-- A route's or virtual host's filter metadata, converted by the bridge as Envoy converts a Struct (nested tables,
-- lists as arrays, numbers as Lua numbers, null as nil).
local Metadata = class("metadata")
function Metadata:get(key)
  local value = self._data[key]
  if value ~= nil then return value end  -- else no value at all, as Envoy (tostring(md:get("x")) is an error)
end
Metadata.__pairs = function(self) return next, self._data, nil end
local function metadata(id, which) return setmetatable({_data = bridge.metadata(id, which)}, Metadata) end

local VirtualHost = class("virtualHost")
function VirtualHost:metadata() return metadata(self._id, "virtual_host") end
local Route = class("route")
function Route:metadata() return metadata(self._id, "route") end

-- The stream's own dynamic metadata (what other filters set and read, the access log prints): a namespace's
-- fields as a table on get, a key set into a namespace (its other keys kept), the namespaces on pairs.
local DynamicMetadata = class("dynamicMetadata")
function DynamicMetadata:get(filter) return bridge.dynamic_get(self._id, filter) end
function DynamicMetadata:set(filter, key, value) bridge.dynamic_set(self._id, filter, key, value) end
DynamicMetadata.__pairs = function(self) return next, bridge.dynamic_all(self._id), nil end

local StreamInfo = class("streamInfo")
function StreamInfo:protocol() return bridge.info(self._id, "protocol") end
function StreamInfo:downstreamLocalAddress() return bridge.info(self._id, "local") end
function StreamInfo:downstreamDirectRemoteAddress() return bridge.info(self._id, "direct_remote") end
function StreamInfo:downstreamRemoteAddress() return bridge.info(self._id, "remote") end
function StreamInfo:requestedServerName() return bridge.info(self._id, "sni") end
function StreamInfo:routeName() return bridge.info(self._id, "route") end
function StreamInfo:dynamicMetadata()
  if self._dynamic == nil then self._dynamic = setmetatable({_id = self._id}, DynamicMetadata) end
  return self._dynamic
end
function StreamInfo:downstreamSslConnection()
  if bridge.info(self._id, "tls") then return setmetatable({}, class("ssl")) end
  return nil
end

local Connection = class("connection")
function Connection:ssl()
  if bridge.info(self._id, "tls") then return setmetatable({}, class("ssl")) end
  return nil
end

-------------------------------------------------------------------- the stream handle
local Handle = class("handle")

function Handle:headers()
  return scoped(setmetatable({_id = self._id, _which = self._side}, Headers), self)
end

-- The first wait for a body: Envoy yields whenever there is one, even if it is all in already.
local function await_body(self)
  local state = bridge.body_state(self._id)
  if state == "none" or self._body_seen then return state end
  if state == "wait" then state = yield("body") end
  self._body_seen = true
  self._scope.n = self._scope.n + 1
  return state
end

function Handle:body(always_wrap)
  local state = await_body(self)
  if state == "none" and not always_wrap then return nil end
  return scoped(setmetatable({_id = self._id}, Buffer), self)
end

function Handle:bodyChunks()
  -- pylon holds the body whole, then gives it as one chunk
  local done = false
  return function()
    if done then return nil end
    done = true
    local body = self:body()
    if body == nil or body:length() == 0 then return nil end
    return body
  end
end

function Handle:trailers()
  await_body(self)
  if not bridge.has_trailers(self._id) then return nil end
  return scoped(setmetatable({_id = self._id, _which = self._side .. "_trailers"}, Headers), self)
end

function Handle:respond(headers, body)
  if self._side ~= "request" then error("respond() is only allowed on the request path (envoy_on_request)", 2) end
  bridge.respond(self._id, flatten(headers), body and tostring(body) or "")
  yield("respond")
  error("the stream already answered", 2)
end

function Handle:httpCall(cluster, headers, body, timeout_or_options, asynchronous)
  local timeout = timeout_or_options
  if type(timeout_or_options) == "table" then
    timeout = timeout_or_options.timeout_ms or 0
    asynchronous = timeout_or_options.asynchronous
    for key in raw_pairs(timeout_or_options) do
      if key ~= "timeout_ms" and key ~= "asynchronous" then
        error("httpCall option " .. tostring(key) .. " is not supported by pylon's Lua filter", 2)
      end
    end
  end
  if type(timeout) ~= "number" then error("httpCall: the timeout must be a number of milliseconds", 2) end
  local flat = flatten(headers)
  if asynchronous then
    bridge.http_call(self._id, cluster, flat, body and tostring(body) or "", timeout, true)
    return nil, nil
  end
  if self._side ~= "request" then
    error("a synchronous httpCall() in envoy_on_response is not supported by pylon's Lua filter", 2)
  end
  bridge.http_call(self._id, cluster, flat, body and tostring(body) or "", timeout, false)
  local answer, answer_body = yield("http")
  self._scope.n = self._scope.n + 1
  local result = {}
  local i = 1
  while answer[i] ~= nil do
    local name, value = answer[i], answer[i + 1]
    local seen = result[name]
    if seen == nil then result[name] = value
    elseif type(seen) == "table" then seen[#seen + 1] = value
    else result[name] = {seen, value} end
    i = i + 2
  end
  return result, answer_body
end

function Handle:streamInfo()
  if self._info == nil then self._info = setmetatable({_id = self._id}, StreamInfo) end
  return self._info
end
function Handle:connection() return setmetatable({_id = self._id}, Connection) end
function Handle:metadata() return metadata(self._id, "handle") end
function Handle:virtualHost() return setmetatable({_id = self._id}, VirtualHost) end
function Handle:route() return setmetatable({_id = self._id}, Route) end
function Handle:timestamp(resolution) return bridge.timestamp(resolution) end
function Handle:timestampString(resolution) return tostring(bridge.timestamp(resolution)) end
function Handle:base64Escape(data) return bridge.encode64(tostring(data)) end
function Handle:logTrace(message) bridge.log(0, tostring(message)) end
function Handle:logDebug(message) bridge.log(1, tostring(message)) end
function Handle:logInfo(message) bridge.log(2, tostring(message)) end
function Handle:logWarn(message) bridge.log(3, tostring(message)) end
function Handle:logErr(message) bridge.log(4, tostring(message)) end
function Handle:logCritical(message) bridge.log(5, tostring(message)) end

-- The route handle of the Lua cluster specifier: only headers().
local RouteHandle = class("route_handle")
function RouteHandle:headers() return scoped(setmetatable({_id = self._id, _which = "request"}, Headers), self) end

-------------------------------------------------------------------- running a script as a coroutine
-- One call from pylon per start or resume (no coroutine object crosses over unless the script waits):
-- (true, nil, result) when the script returned, (true, co, what) when it waits for `what`, (false, error).
local function runner(fn, id, side)
  local handle
  if side == "route" then
    handle = setmetatable({_id = id, _scope = {n = 0}}, RouteHandle)
  else
    handle = setmetatable({_id = id, _side = side, _scope = {n = 0}}, Handle)
  end
  return fn(handle)
end

local function settle(co, ok, value, ...)
  if not ok then return false, tostring(value) end
  if coroutine.status(co) == "dead" then return true, nil, value end
  return true, co, value
end

return {
  pairs = pairs,
  start = function(fn, id, side)
    local co = coroutine.create(runner)
    return settle(co, coroutine.resume(co, fn, id, side))
  end,
  resume = function(co, ...) return settle(co, coroutine.resume(co, ...)) end,
}
