#include "agent/convert.h"

#include <cmath>

#include "addon.h"

namespace kvxfer {

Napi::Error MakeError(Napi::Env env, const Status& status) {
  Napi::Object details = Napi::Object::New(env);
  if (!status.engine_status.empty()) {
    details.Set("engineStatus", status.engine_status);
    details.Set("engineCode", status.engine_code);
  }
  auto* addon = env.GetInstanceData<KvxferAddon>();
  if (addon != nullptr && !addon->error_constructor.IsEmpty()) {
    Napi::Value error = addon->error_constructor.New(
        {Napi::String::New(env, CodeName(status.code)), Napi::String::New(env, status.message), details});
    return Napi::Error(env, error);
  }
  Napi::Error error = Napi::Error::New(env, status.message);
  error.Set("code", CodeName(status.code));
  return error;
}

void Throw(Napi::Env env, Code code, const std::string& message) {
  throw MakeError(env, Status::Error(code, message));
}

void Throw(Napi::Env env, const Status& status) { throw MakeError(env, status); }

uint64_t ToU64(Napi::Env env, const Napi::Value& value, const char* what) {
  if (value.IsBigInt()) {
    bool lossless = false;
    uint64_t v = value.As<Napi::BigInt>().Uint64Value(&lossless);
    if (lossless) return v;
  } else if (value.IsNumber()) {
    double d = value.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d) return static_cast<uint64_t>(d);
  }
  Throw(env, Code::kInvalidArg, std::string(what) + " must be a non-negative integer (number or bigint)");
}

uint32_t ToU32(Napi::Env env, const Napi::Value& value, const char* what) {
  uint64_t v = ToU64(env, value, what);
  if (v > UINT32_MAX) Throw(env, Code::kInvalidArg, std::string(what) + " is too large");
  return static_cast<uint32_t>(v);
}

Napi::Uint8Array ToBytes(Napi::Env env, const Napi::Value& value, const char* what) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Throw(env, Code::kInvalidArg, std::string(what) + " must be a Uint8Array");
  }
  return value.As<Napi::Uint8Array>();
}

MemKind ToMemKind(Napi::Env env, const Napi::Value& value, const char* what) {
  const uint32_t kind = ToU32(env, value, what);
  switch (kind) {
#define KVXFER_CASE(name, number, text) \
  case number:                          \
    return MemKind::k##name;
    KVXFER_MEM_KINDS(KVXFER_CASE)
#undef KVXFER_CASE
  }
  Throw(env, Code::kInvalidArg, std::string("unknown ") + what);
}

XferOp ToXferOp(Napi::Env env, const Napi::Value& value) {
  const uint32_t op = ToU32(env, value, "op");
  switch (op) {
#define KVXFER_CASE(name, number, text) \
  case number:                          \
    return XferOp::k##name;
    KVXFER_XFER_OPS(KVXFER_CASE)
#undef KVXFER_CASE
  }
  Throw(env, Code::kInvalidArg, "op must be 'write' or 'read'");
}

namespace {

std::string OptionalString(Napi::Env env, Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return std::string();
  if (!v.IsString()) Throw(env, Code::kInvalidArg, std::string(key) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

}  // namespace

AgentConfig ToAgentConfig(Napi::Env env, Napi::Object o) {
  AgentConfig config;
  EngineOptions& options = config.engine;
  options.engine = OptionalString(env, o, "engine");
  if (options.engine.empty()) options.engine = "ucx";
  if (options.engine != "ucx" && options.engine != "nixl") {
    Throw(env, Code::kInvalidArg, "engine must be 'ucx' or 'nixl'");
  }
  options.transports = OptionalString(env, o, "transports");
  options.backend = OptionalString(env, o, "backend");
  Napi::Value params = o.Get("backendParams");
  if (!params.IsUndefined()) {
    if (!params.IsObject()) Throw(env, Code::kInvalidArg, "backendParams must be an object of strings");
    Napi::Object p = params.As<Napi::Object>();
    Napi::Array keys = p.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
      Napi::Value value = p.Get(key);
      if (!value.IsString()) Throw(env, Code::kInvalidArg, "backendParams." + key + " must be a string");
      options.backend_params.emplace_back(key, value.As<Napi::String>().Utf8Value());
    }
  }
  Napi::Value busy_poll = o.Get("busyPollUs");
  if (!busy_poll.IsUndefined()) {
    const double us = busy_poll.IsNumber() ? busy_poll.As<Napi::Number>().DoubleValue() : -1;
    if (!(us >= 0 && us <= static_cast<double>(limits::kMaxBusyPollUs))) {
      Throw(env, Code::kInvalidArg,
            "busyPollUs must be a number from 0 to " + std::to_string(limits::kMaxBusyPollUs));
    }
    config.busy_poll_ns = static_cast<uint64_t>(us * 1000);
  }
  Napi::Value peer_timeout = o.Get("peerTimeoutMs");
  if (!peer_timeout.IsUndefined()) {
    const double ms = peer_timeout.IsNumber() ? peer_timeout.As<Napi::Number>().DoubleValue() : -1;
    if (!(ms >= 0 && ms <= 86400000.0)) Throw(env, Code::kInvalidArg, "peerTimeoutMs must be a number from 0 to 86400000");
    options.peer_timeout_ms = static_cast<uint64_t>(ms);
  }
  Napi::Value push = o.Get("pushUpdates");
  if (!push.IsUndefined()) {
    if (!push.IsBoolean()) Throw(env, Code::kInvalidArg, "pushUpdates must be a boolean");
    options.push_updates = push.As<Napi::Boolean>().Value();
  }
  Napi::Value share = o.Get("shareRegisteredMemory");
  if (!share.IsUndefined()) {
    if (!share.IsBoolean()) Throw(env, Code::kInvalidArg, "shareRegisteredMemory must be a boolean");
    options.share_registered_memory = share.As<Napi::Boolean>().Value();
  }
  return config;
}

}  // namespace kvxfer
