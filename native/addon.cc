#include "addon.h"

#include "agent/agent.h"
#include "agent/convert.h"
#include "cuda/cuda_helper.h"
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
                           InstanceValue("cuda", cuda::HelperExports(env)),
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

namespace {

Napi::Array Strings(Napi::Env env, const std::vector<std::string>& items) {
  Napi::Array out = Napi::Array::New(env, items.size());
  for (size_t i = 0; i < items.size(); ++i) out.Set(static_cast<uint32_t>(i), items[i]);
  return out;
}

}  // namespace

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
  const UcxCudaSupport& ucx_cuda = QueryUcxCuda();
  Napi::Object ucx_cuda_info = Napi::Object::New(env);
  ucx_cuda_info.Set("supported", ucx_cuda.supported);
  ucx_cuda_info.Set("memoryDomains", Strings(env, ucx_cuda.memory_domains));
  ucx_cuda_info.Set("transports", Strings(env, ucx_cuda.transports));
  if (!ucx_cuda.supported) ucx_cuda_info.Set("reason", ucx_cuda.reason);
  ucx.Set("cuda", ucx_cuda_info);
  const NixlInfo nixl_info = QueryNixl(true);
  Napi::Object nixl = Napi::Object::New(env);
  nixl.Set("available", nixl_info.available);
  if (nixl_info.available) {
    nixl.Set("path", nixl_info.path);
    Napi::Array plugins = Napi::Array::New(env);
    Napi::Object memory_types = Napi::Object::New(env);
    std::vector<std::string> vram_backends;
    std::string no_vram = "no NIXL backend plugin here handles VRAM";
    for (const NixlPlugin& p : nixl_info.plugins) {
      plugins.Set(plugins.Length(), p.name);
      memory_types.Set(p.name, Strings(env, p.memory_types));
      if (p.vram_refusal.empty()) vram_backends.push_back(p.name);
      if (p.name == "UCX") no_vram = p.vram_refusal;  // the backend agents use by default says why
    }
    nixl.Set("plugins", plugins);
    nixl.Set("memoryTypes", memory_types);
    Napi::Object nixl_cuda = Napi::Object::New(env);
    nixl_cuda.Set("supported", !vram_backends.empty());
    nixl_cuda.Set("backends", Strings(env, vram_backends));
    if (vram_backends.empty()) nixl_cuda.Set("reason", no_vram);
    nixl.Set("cuda", nixl_cuda);
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
