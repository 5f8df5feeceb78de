// Per-environment state (one per main thread or worker_thread): nothing in
// the addon is global, so agents work inside worker_threads.
#pragma once

#include <napi.h>

#include <cstdint>

#include "loop/busy_poll.h"

namespace kvxfer {

class KvxferAddon : public Napi::Addon<KvxferAddon> {
 public:
  KvxferAddon(Napi::Env env, Napi::Object exports);

  Napi::FunctionReference error_constructor;
  Napi::FunctionReference agent_constructor;

  // Shared by the agents of this environment (loop/busy_poll.h).
  loop::BusyPollWindow busy_poll;

 private:
  Napi::Value SetErrorClass(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value NixlStatus(const Napi::CallbackInfo& info);
  static Napi::Object Protocol(Napi::Env env);
};

}  // namespace kvxfer
