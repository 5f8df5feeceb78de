// Per-environment state (one per main thread or worker_thread): nothing in
// the addon is global, so agents work inside worker_threads.
#pragma once

#include <napi.h>

#include <cstdint>

namespace kvxfer {

class KvxferAddon : public Napi::Addon<KvxferAddon> {
 public:
  KvxferAddon(Napi::Env env, Napi::Object exports);

  Napi::FunctionReference error_constructor;
  Napi::FunctionReference agent_constructor;

  // One busy-poll window per loop turn, shared by the agents of this
  // environment: each polls in its own prepare callback, and without this
  // their budgets would add up before the loop gets to timers and I/O.
  struct BusyPollWindow {
    uint64_t deadline_ns = 0;
    uint64_t last_exit_ns = 0;
  } busy_poll;

 private:
  Napi::Value SetErrorClass(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value NixlStatus(const Napi::CallbackInfo& info);
};

}  // namespace kvxfer
