// Between JS values and the addon's C++ types, on the JS thread: arguments in
// (checked, with messages that name the argument), Status out as the
// KvxferError class lib/errors.ts defines.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

#include "engine.h"
#include "status.h"

namespace kvxfer {

// The per-environment constructor is registered once by lib/native.ts; until
// then (never in practice) a plain Error with a `code` property is made.
Napi::Error MakeError(Napi::Env env, const Status& status);

// Shorthand for the many argument checks: throws a C++ Napi::Error that
// node-addon-api turns into a JS exception at the binding boundary.
[[noreturn]] void Throw(Napi::Env env, Code code, const std::string& message);
[[noreturn]] void Throw(Napi::Env env, const Status& status);
inline void ThrowIfError(Napi::Env env, const Status& status) {
  if (!status.ok()) Throw(env, status);
}

// A non-negative integer given as a number (exactly) or a bigint (losslessly).
uint64_t ToU64(Napi::Env env, const Napi::Value& value, const char* what);
uint32_t ToU32(Napi::Env env, const Napi::Value& value, const char* what);
Napi::Uint8Array ToBytes(Napi::Env env, const Napi::Value& value, const char* what);
// A memory kind or transfer direction as protocol.h numbers them.
MemKind ToMemKind(Napi::Env env, const Napi::Value& value, const char* what);
XferOp ToXferOp(Napi::Env env, const Napi::Value& value);

// What NativeAgent's constructor takes: { engine, transports?, backend?,
// backendParams?, busyPollUs? }, validated by lib/ first; checked again here
// because the addon trusts nothing it is handed.
struct AgentConfig {
  EngineOptions engine;
  uint64_t busy_poll_ns = 0;
};
AgentConfig ToAgentConfig(Napi::Env env, Napi::Object options);

}  // namespace kvxfer
