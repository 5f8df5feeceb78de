#include "nixl/nixl_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace kvxfer {
namespace nixl {

namespace {

constexpr const char* kCapiLibrary = "libnixl_capi.so";
constexpr const char* kDefaultPrefix = "/opt/nvidia/nvda_nixl";
#if defined(__x86_64__)
constexpr const char* kArchDir = "x86_64-linux-gnu";
#elif defined(__aarch64__)
constexpr const char* kArchDir = "aarch64-linux-gnu";
#else
constexpr const char* kArchDir = "";
#endif

// The C API library carries no RUNPATH of its own: opening it by full path
// finds its siblings only when they are already loaded.
constexpr const char* kSiblings[] = {"libnixl_common.so", "libserdes.so", "libnixl_build.so",
                                     "libnixl.so"};

std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* lib = std::getenv("KVXFER_NIXL_LIB"); lib != nullptr && *lib != '\0') {
    out.push_back(lib);
  }
  auto add_prefix = [&](const std::string& prefix) {
    out.push_back(prefix + "/lib/" + kCapiLibrary);
    if (*kArchDir != '\0') out.push_back(prefix + "/lib/" + kArchDir + "/" + kCapiLibrary);
  };
  if (const char* prefix = std::getenv("NIXL_PREFIX"); prefix != nullptr && *prefix != '\0') {
    add_prefix(prefix);
  }
  add_prefix(kDefaultPrefix);
  out.push_back(kCapiLibrary);  // the loader's own search path
  return out;
}

void* Open(const std::string& path, std::string* why) {
  const size_t slash = path.rfind('/');
  if (slash != std::string::npos) {
    const std::string dir = path.substr(0, slash + 1);
    for (const char* sibling : kSiblings) dlopen((dir + sibling).c_str(), RTLD_NOW | RTLD_GLOBAL);
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* message = dlerror();
    *why = message != nullptr ? message : "dlopen failed";
  }
  return handle;
}

template <typename F>
bool Resolve(void* handle, const char* name, F* out, std::string* missing) {
  *out = reinterpret_cast<F>(dlsym(handle, name));
  if (*out == nullptr) {
    if (!missing->empty()) *missing += ", ";
    *missing += name;
  }
  return *out != nullptr;
}

struct Loaded {
  Api api;
  const Api* ok = nullptr;
  std::string error;
};

Loaded LoadOnce() {
  Loaded loaded;
  std::string tried;
  void* handle = nullptr;
  for (const std::string& path : Candidates()) {
    std::string why;
    handle = Open(path, &why);
    if (handle != nullptr) {
      loaded.api.path = path;
      break;
    }
    tried += "\n  " + path + ": " + why;
  }
  if (handle == nullptr) {
    loaded.error = "NIXL is not installed or not found (set KVXFER_NIXL_LIB to libnixl_capi.so, "
                   "or NIXL_PREFIX to its install prefix); tried:" + tried;
    return loaded;
  }
  Api& a = loaded.api;
  std::string missing;
#define KVXFER_NIXL_FN(name) Resolve(handle, "nixl_capi_" #name, &a.name, &missing)
  KVXFER_NIXL_FN(create_configured_agent);
  KVXFER_NIXL_FN(destroy_agent);
  KVXFER_NIXL_FN(get_local_md);
  KVXFER_NIXL_FN(load_remote_md);
  KVXFER_NIXL_FN(invalidate_remote_md);
  KVXFER_NIXL_FN(get_available_plugins);
  KVXFER_NIXL_FN(destroy_string_list);
  KVXFER_NIXL_FN(string_list_size);
  KVXFER_NIXL_FN(string_list_get);
  KVXFER_NIXL_FN(get_plugin_params);
  KVXFER_NIXL_FN(destroy_mem_list);
  KVXFER_NIXL_FN(mem_list_size);
  KVXFER_NIXL_FN(mem_list_get);
  KVXFER_NIXL_FN(destroy_params);
  KVXFER_NIXL_FN(params_add);
  KVXFER_NIXL_FN(create_backend);
  KVXFER_NIXL_FN(destroy_backend);
  KVXFER_NIXL_FN(create_opt_args);
  KVXFER_NIXL_FN(destroy_opt_args);
  KVXFER_NIXL_FN(opt_args_add_backend);
  KVXFER_NIXL_FN(opt_args_set_notif_msg);
  KVXFER_NIXL_FN(opt_args_set_has_notif);
  KVXFER_NIXL_FN(create_reg_dlist);
  KVXFER_NIXL_FN(destroy_reg_dlist);
  KVXFER_NIXL_FN(reg_dlist_add_desc);
  KVXFER_NIXL_FN(register_mem);
  KVXFER_NIXL_FN(deregister_mem);
  KVXFER_NIXL_FN(create_xfer_dlist);
  KVXFER_NIXL_FN(destroy_xfer_dlist);
  KVXFER_NIXL_FN(xfer_dlist_add_desc);
  KVXFER_NIXL_FN(prep_xfer_dlist);
  KVXFER_NIXL_FN(release_xfer_dlist_handle);
  KVXFER_NIXL_FN(make_xfer_req);
  KVXFER_NIXL_FN(post_xfer_req);
  KVXFER_NIXL_FN(get_xfer_status);
  KVXFER_NIXL_FN(release_xfer_req);
  KVXFER_NIXL_FN(destroy_xfer_req);
  KVXFER_NIXL_FN(get_xfer_telemetry);
  KVXFER_NIXL_FN(estimate_xfer_cost);
  KVXFER_NIXL_FN(create_notif_map);
  KVXFER_NIXL_FN(destroy_notif_map);
  KVXFER_NIXL_FN(get_notifs);
  KVXFER_NIXL_FN(notif_map_size);
  KVXFER_NIXL_FN(notif_map_get_agent_at);
  KVXFER_NIXL_FN(notif_map_get_notifs_size);
  KVXFER_NIXL_FN(notif_map_get_notif);
  KVXFER_NIXL_FN(notif_map_clear);
  KVXFER_NIXL_FN(gen_notif);
  KVXFER_NIXL_FN(is_stub);
#undef KVXFER_NIXL_FN
  if (!missing.empty()) {
    loaded.error = "the NIXL at " + a.path + " is too old or incomplete: it lacks " + missing;
    return loaded;
  }
  if (a.is_stub()) {
    loaded.error = "the NIXL at " + a.path + " is a stub build without a working implementation";
    return loaded;
  }
  loaded.ok = &loaded.api;
  return loaded;
}

}  // namespace

const Api* Load(std::string* error) {
  static std::once_flag once;
  static Loaded* loaded = nullptr;
  std::call_once(once, [] {
    loaded = new Loaded(LoadOnce());
    if (loaded->ok != nullptr) loaded->ok = &loaded->api;
  });
  if (loaded->ok == nullptr) *error = loaded->error;
  return loaded->ok;
}

const char* StatusName(Status status) {
  switch (status) {
    case kSuccess: return "NIXL_CAPI_SUCCESS";
    case kErrorInvalidParam: return "NIXL_CAPI_ERROR_INVALID_PARAM";
    case kErrorBackend: return "NIXL_CAPI_ERROR_BACKEND";
    case kErrorInvalidState: return "NIXL_CAPI_ERROR_INVALID_STATE";
    case kErrorException: return "NIXL_CAPI_ERROR_EXCEPTION";
    case kInProgress: return "NIXL_CAPI_IN_PROG";
    case kErrorNoTelemetry: return "NIXL_CAPI_ERROR_NO_TELEMETRY";
  }
  return "NIXL_CAPI_UNKNOWN";
}

const char* MemTypeName(MemType type) {
  switch (type) {
    case kDram: return "DRAM";
    case kVram: return "VRAM";
    case kBlock: return "BLK";
    case kObject: return "OBJ";
    case kFile: return "FILE";
  }
  return "UNKNOWN";
}

}  // namespace nixl
}  // namespace kvxfer
