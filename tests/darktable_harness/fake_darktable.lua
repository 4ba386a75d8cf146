-- A fake `darktable` module (Lua API 9.0.0 surface used by focus_stack.lua) for unit tests
-- under lupa.lua54. Python drives it through the FAKE table: FAKE.execute_handler(cmd) and
-- FAKE.sleep_handler(ms) are Python callables; everything the plugin does is recorded.

local FAKE = {
  printed = {}, logs = {}, commands = {}, libs = {}, storages = {}, events = {},
  jobs = {}, imports = {}, actions = {}, prefs = {}, written_frames = {},
  next_id = 1, selection = {}, action_images = {}, api = "9.0.0",
  export_produces_nothing = false,
}

local dt = {}
-- the plugin reads running_os once, at load: set it to "windows" before loading to test
-- its cmd.exe / run.bat side
dt.configuration = {
  api_version_string = "9.0.0", version = "4.2.1", has_gui = true,
  tmp_dir = "/tmp", config_dir = "/tmp", running_os = "linux",
}
dt.gettext = {
  dgettext = function(domain, s) return s end,
  gettext = function(s) return s end,
  bindtextdomain = function() end,
}
dt.preferences = {
  read = function(module, key, kind)
    local v = FAKE.prefs[module .. "/" .. key]
    if v == nil then
      if kind == "bool" then return false elseif kind == "integer" or kind == "float" then return 0 end
      return ""
    end
    return v
  end,
  write = function(module, key, kind, value) FAKE.prefs[module .. "/" .. key] = value end,
  register = function() end,
}
dt.print = function(msg) FAKE.printed[#FAKE.printed + 1] = tostring(msg) end
dt.print_log = function(msg) FAKE.logs[#FAKE.logs + 1] = tostring(msg) end
dt.print_error = function(msg) FAKE.logs[#FAKE.logs + 1] = "ERROR " .. tostring(msg) end

dt.new_widget = function(kind)
  return function(t)
    local w = {}
    for k, v in pairs(t) do w[k] = v end
    w._kind = kind
    return w
  end
end

dt.register_lib = function(name, label, expandable, resetable, views, widget, ...)
  FAKE.libs[name] = {label = label, views = views, widget = widget}
  dt.gui.libs[name] = {visible = true}
end
dt.register_storage = function(name, label, store, finalize, supported, initialize, widget)
  FAKE.storages[name] = {label = label, store = store, finalize = finalize, supported = supported,
                         initialize = initialize, widget = widget}
end
dt.destroy_storage = function(name) FAKE.storages[name] = nil; FAKE.destroyed_storage = name end
dt.register_event = function(name, event, fn) FAKE.events[#FAKE.events + 1] = {name, event, fn} end
dt.destroy_event = function(name, event) FAKE.destroyed_event = name .. "/" .. event end

dt.gui = {
  views = {lighttable = {id = "lighttable", name = "lighttable"}},
  libs = {},
  action_images = FAKE.action_images,
}
dt.gui.current_view = function() return FAKE.current_view or dt.gui.views.lighttable end
dt.gui.selection = function(list)
  local previous = {}
  for i, v in ipairs(FAKE.selection) do previous[i] = v end
  if list then
    FAKE.selection = {}
    for i, v in ipairs(list) do FAKE.selection[i] = v end
  end
  return previous
end
dt.gui.action = function(path, instance, element, effect, speed)
  local ids = {}
  for i, img in ipairs(FAKE.selection) do ids[i] = img.id end
  FAKE.actions[#FAKE.actions + 1] = {path = path, selection = ids}
  return 0 / 0
end
dt.gui.create_job = function(text, has_percent, cancel_cb)
  local job = {text = text, percents = {}, cancel_cb = cancel_cb, valid = true}
  local proxy = setmetatable({}, {
    __index = job,
    __newindex = function(_, k, v)
      if k == "percent" then job.percents[#job.percents + 1] = v end
      job[k] = v
    end,
  })
  FAKE.jobs[#FAKE.jobs + 1] = job
  return proxy
end

dt.control = {
  execute = function(cmd)
    FAKE.commands[#FAKE.commands + 1] = cmd
    return FAKE.execute_handler(cmd)
  end,
  sleep = function(ms) FAKE.sleep_handler(ms) end,
}

-- an image's group leader as darktable gives it: the image of its group_id (itself when it
-- has none); tests set exif_datetime_taken ("YYYY:MM:DD hh:mm:ss", darktable's "" or nil
-- when the file has none)
local IMAGE_MT = {__index = function(img, key)
  if key == "group_leader" then
    local gid = rawget(img, "group_id")
    for _, other in ipairs(FAKE.all_images) do
      if gid ~= nil and other.id == gid then return other end
    end
    return img
  end
end}

local function new_image(path, filename)
  local img = setmetatable({id = FAKE.next_id, path = path, filename = filename, rating = 1,
               title = "", tags = {}, group_leader_id = nil, exif_lens = ""}, IMAGE_MT)
  FAKE.next_id = FAKE.next_id + 1
  -- darktable: the image joins the other's group (the other's leader leads it)
  function img.group_with(self, other) self.group_id = other.group_id or other.id end
  function img.make_group_leader(self)
    local old = self.group_id
    for _, other in ipairs(FAKE.all_images) do
      if other.group_id == old and old ~= nil then other.group_id = self.id end
    end
    self.group_id = self.id
    FAKE.leaders[#FAKE.leaders + 1] = self.id
  end
  FAKE.all_images[#FAKE.all_images + 1] = img
  return img
end
FAKE.all_images = {}
FAKE.leaders = {}
FAKE.new_image = new_image

dt.database = {
  import = function(file)
    FAKE.imports[#FAKE.imports + 1] = file
    local dir, name = file:match("^(.*)/([^/]*)$")
    return new_image(dir, name)
  end,
}

dt.tags = {
  create = function(name)
    FAKE.tag_objects = FAKE.tag_objects or {}
    FAKE.tag_objects[name] = FAKE.tag_objects[name] or {name = name}
    return FAKE.tag_objects[name]
  end,
  attach = function(tag, img) img.tags[#img.tags + 1] = tag end,
  get_tags = function(img)
    local t = {}
    for i, v in ipairs(img.tags) do t[i] = v end
    return t
  end,
}

dt.new_format = function(name)
  local fmt = {name = name, bpp = 8, extension = "tif"}
  function fmt.write_image(self, img, path)
    FAKE.written_frames[#FAKE.written_frames + 1] = {id = img.id, path = path, bpp = self.bpp}
    if not FAKE.export_produces_nothing then
      local f = assert(io.open(path, "wb"))
      f:write("II*\0fake tiff")
      f:close()
    end
    return false  -- darktable 4.2.1 returns false on success
  end
  return fmt
end

FAKE.dt = dt
return FAKE
