#include "addon.h"

#include "agent.h"
#include "bench.h"
#include "errors.h"
#include "ucx/ucx_engine.h"
#include "ucx/ucx_info.h"

namespace kvxfer {

KvxferAddon::KvxferAddon(Napi::Env env, Napi::Object exports) {
  PrepareUcxEnvironment();
  Napi::Function agent = NativeAgent::Init(env);
  agent_constructor = Napi::Persistent(agent);
  DefineAddon(exports, {
                           InstanceMethod("setErrorClass", &KvxferAddon::SetErrorClass),
                           InstanceMethod("info", &KvxferAddon::Info),
                           InstanceValue("NativeAgent", agent),
                           InstanceValue("memcpyBench", Napi::Function::New(env, MemcpyBench, "memcpyBench")),
                       });
}

Napi::Value KvxferAddon::SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) Throw(info.Env(), Code::kInvalidArg, "setErrorClass(constructor)");
  error_constructor = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value KvxferAddon::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object ucx = Napi::Object::New(env);
  ucx.Set("version", UcxVersion());
  Napi::Array transports = Napi::Array::New(env);
  for (const UcxTransport& t : UcxTransports()) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", t.name);
    o.Set("device", t.device);
    transports.Set(transports.Length(), o);
  }
  ucx.Set("transports", transports);
  Napi::Object result = Napi::Object::New(env);
  result.Set("ucx", ucx);
  return result;
}

}  // namespace kvxfer

using kvxfer::KvxferAddon;
NODE_API_ADDON(KvxferAddon)
