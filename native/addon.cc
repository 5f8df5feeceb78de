#include "addon.h"

#include "agent/agent.h"
#include "agent/convert.h"
#include "engine.h"
#include "protocol.h"
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
                           InstanceMethod("nixlStatus", &KvxferAddon::NixlStatus),
                           InstanceValue("NativeAgent", agent),
                           InstanceValue("protocol", Protocol(env)),
                       });
}

Napi::Value KvxferAddon::SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) Throw(info.Env(), Code::kInvalidArg, "setErrorClass(constructor)");
  error_constructor = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

// protocol.h's tables, in the shape of lib/protocol.ts, which lib/native.ts
// compares them with at load.
Napi::Object KvxferAddon::Protocol(Napi::Env env) {
  Napi::Object protocol = Napi::Object::New(env);
  Napi::Array codes = Napi::Array::New(env);
#define KVXFER_ITEM(name, text, doc) codes.Set(codes.Length(), text);
  KVXFER_ERROR_CODES(KVXFER_ITEM)
#undef KVXFER_ITEM
  protocol.Set("ERROR_CODES", codes);
  Napi::Object kinds = Napi::Object::New(env);
#define KVXFER_ITEM(name, value, text) kinds.Set(text, value);
  KVXFER_MEM_KINDS(KVXFER_ITEM)
#undef KVXFER_ITEM
  protocol.Set("MEM_KIND", kinds);
  Napi::Object ops = Napi::Object::New(env);
#define KVXFER_ITEM(name, value, text) ops.Set(text, value);
  KVXFER_XFER_OPS(KVXFER_ITEM)
#undef KVXFER_ITEM
  protocol.Set("XFER_OP", ops);
  Napi::Object events = Napi::Object::New(env);
#define KVXFER_ITEM(name, value) events.Set(#name, value);
  KVXFER_EVENT_KINDS(KVXFER_ITEM)
#undef KVXFER_ITEM
  protocol.Set("EVENT_KIND", events);
  Napi::Object numbers = Napi::Object::New(env);
#define KVXFER_ITEM(name, value) numbers.Set(#name, static_cast<double>(limits::k##name));
  KVXFER_LIMITS(KVXFER_ITEM)
#undef KVXFER_ITEM
  protocol.Set("LIMITS", numbers);
  return protocol;
}

// Whether NIXL loads, without starting an agent (info() lists plugins too).
Napi::Value KvxferAddon::NixlStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const NixlInfo nixl_info = QueryNixl(false);
  Napi::Object nixl = Napi::Object::New(env);
  nixl.Set("available", nixl_info.available);
  nixl.Set(nixl_info.available ? "path" : "reason", nixl_info.available ? nixl_info.path : nixl_info.reason);
  return nixl;
}

Napi::Value KvxferAddon::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object ucx = Napi::Object::New(env);
  ucx.Set("version", UcxVersion());
  ucx.Set("threads", UcxThreads());
  Napi::Array transports = Napi::Array::New(env);
  for (const UcxTransport& t : UcxTransports()) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", t.name);
    o.Set("device", t.device);
    transports.Set(transports.Length(), o);
  }
  ucx.Set("transports", transports);
  const NixlInfo nixl_info = QueryNixl(true);
  Napi::Object nixl = Napi::Object::New(env);
  nixl.Set("available", nixl_info.available);
  if (nixl_info.available) {
    nixl.Set("path", nixl_info.path);
    Napi::Array plugins = Napi::Array::New(env);
    for (const std::string& p : nixl_info.plugins) plugins.Set(plugins.Length(), p);
    nixl.Set("plugins", plugins);
  } else {
    nixl.Set("reason", nixl_info.reason);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("ucx", ucx);
  result.Set("nixl", nixl);
  return result;
}

}  // namespace kvxfer

using kvxfer::KvxferAddon;
NODE_API_ADDON(KvxferAddon)
