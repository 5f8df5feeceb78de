// Per-environment state (one per main thread or worker_thread): nothing in
// the addon is global, so agents work inside worker_threads.
#pragma once

#include <napi.h>

namespace kvxfer {

class KvxferAddon : public Napi::Addon<KvxferAddon> {
 public:
  KvxferAddon(Napi::Env env, Napi::Object exports);

  Napi::FunctionReference error_constructor;
  Napi::FunctionReference agent_constructor;

 private:
  Napi::Value SetErrorClass(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value NixlStatus(const Napi::CallbackInfo& info);
};

}  // namespace kvxfer
