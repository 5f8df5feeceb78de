// NIXL's C API (libnixl_capi.so), resolved with dlopen/dlsym at run time so
// that one addon runs with and without NIXL installed. Only the functions
// kvxfer calls are declared, with the types of nixl_capi.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvxfer {
namespace nixl {

enum Status : int {
  kSuccess = 0,
  kErrorInvalidParam = -1,
  kErrorBackend = -2,
  kErrorInvalidState = -3,
  kErrorException = -4,
  kInProgress = 1,
  kErrorNoTelemetry = -5,
};

enum MemType : int { kDram = 0, kVram = 1, kBlock = 2, kObject = 3, kFile = 4 };
enum XferOp : int { kRead = 0, kWrite = 1 };
enum ThreadSync : int { kSyncNone = 0, kSyncStrict = 1, kSyncRw = 2 };

struct AgentConfig {
  bool enable_prog_thread;
  bool enable_listen_thread;
  int listen_port;
  ThreadSync thread_sync;
  unsigned int num_workers;
  uint64_t pthr_delay_us;
  uint64_t lthr_delay_us;
  bool capture_telemetry;
};

struct Telemetry {
  uint64_t start_time_us;
  uint64_t post_duration_us;
  uint64_t xfer_duration_us;
  uint64_t total_bytes;
  uint64_t desc_count;
};

using Agent = struct nixl_capi_agent_s*;
using Params = struct nixl_capi_params_s*;
using MemList = struct nixl_capi_mem_list_s*;
using StringList = struct nixl_capi_string_list_s*;
using Backend = struct nixl_capi_backend_s*;
using OptArgs = struct nixl_capi_opt_args_s*;
using XferDlist = struct nixl_capi_xfer_dlist_s*;
using XferDlistHandle = struct nixl_capi_xfer_dlist_handle_s*;
using RegDlist = struct nixl_capi_reg_dlist_s*;
using XferReq = struct nixl_capi_xfer_req_s*;
using NotifMap = struct nixl_capi_notif_map_s*;

struct Api {
  std::string path;  // the library that was loaded

  Status (*create_configured_agent)(const char*, const AgentConfig*, Agent*);
  Status (*destroy_agent)(Agent);
  Status (*get_local_md)(Agent, void**, size_t*);
  Status (*load_remote_md)(Agent, const void*, size_t, char**);
  Status (*invalidate_remote_md)(Agent, const char*);
  Status (*get_available_plugins)(Agent, StringList*);
  Status (*destroy_string_list)(StringList);
  Status (*string_list_size)(StringList, size_t*);
  Status (*string_list_get)(StringList, size_t, const char**);
  Status (*get_plugin_params)(Agent, const char*, MemList*, Params*);
  Status (*destroy_mem_list)(MemList);
  Status (*mem_list_size)(MemList, size_t*);
  Status (*mem_list_get)(MemList, size_t, MemType*);
  Status (*destroy_params)(Params);
  Status (*params_add)(Params, const char*, const char*);
  Status (*create_backend)(Agent, const char*, Params, Backend*);
  Status (*destroy_backend)(Backend);
  Status (*create_opt_args)(OptArgs*);
  Status (*destroy_opt_args)(OptArgs);
  Status (*opt_args_add_backend)(OptArgs, Backend);
  Status (*opt_args_set_notif_msg)(OptArgs, const void*, size_t);
  Status (*opt_args_set_has_notif)(OptArgs, bool);
  Status (*create_reg_dlist)(MemType, RegDlist*);
  Status (*destroy_reg_dlist)(RegDlist);
  Status (*reg_dlist_add_desc)(RegDlist, uintptr_t, size_t, uint64_t, const void*, size_t);
  Status (*register_mem)(Agent, RegDlist, OptArgs);
  Status (*deregister_mem)(Agent, RegDlist, OptArgs);
  Status (*create_xfer_dlist)(MemType, XferDlist*);
  Status (*destroy_xfer_dlist)(XferDlist);
  Status (*xfer_dlist_add_desc)(XferDlist, uintptr_t, size_t, uint64_t);
  Status (*prep_xfer_dlist)(Agent, const char*, XferDlist, XferDlistHandle*, OptArgs);
  Status (*release_xfer_dlist_handle)(Agent, XferDlistHandle);
  Status (*make_xfer_req)(Agent, XferOp, XferDlistHandle, const int*, size_t, XferDlistHandle,
                          const int*, size_t, XferReq*, OptArgs);
  Status (*post_xfer_req)(Agent, XferReq, OptArgs);
  Status (*get_xfer_status)(Agent, XferReq);
  Status (*release_xfer_req)(Agent, XferReq);
  Status (*destroy_xfer_req)(XferReq);
  Status (*get_xfer_telemetry)(Agent, XferReq, Telemetry*);
  Status (*estimate_xfer_cost)(Agent, XferReq, OptArgs, int64_t*, int64_t*, int*);
  Status (*create_notif_map)(NotifMap*);
  Status (*destroy_notif_map)(NotifMap);
  Status (*get_notifs)(Agent, NotifMap, OptArgs);
  Status (*notif_map_size)(NotifMap, size_t*);
  Status (*notif_map_get_agent_at)(NotifMap, size_t, const char**);
  Status (*notif_map_get_notifs_size)(NotifMap, const char*, size_t*);
  Status (*notif_map_get_notif)(NotifMap, const char*, size_t, const void**, size_t*);
  Status (*notif_map_clear)(NotifMap);
  Status (*gen_notif)(Agent, const char*, const void*, size_t, OptArgs);
  bool (*is_stub)();
};

// Loads NIXL once per process (the library and its function table never
// change once loaded). Null with `error` saying why when it cannot: not
// found (and where it looked), missing functions (too old), or a stub build.
const Api* Load(std::string* error);

const char* StatusName(Status status);
// "DRAM", "VRAM", ... as NIXL names its memory types.
const char* MemTypeName(MemType type);

}  // namespace nixl
}  // namespace kvxfer
