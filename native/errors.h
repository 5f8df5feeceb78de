// Turning a Status into the JS KvxferError class that lib/errors.ts defines.
#pragma once

#include <napi.h>

#include "status.h"

namespace kvxfer {

// The per-environment constructor is registered once by lib/native.ts; until
// then (never in practice) a plain Error with a `code` property is made.
Napi::Error MakeError(Napi::Env env, const Status& status);

// Shorthand for the many argument checks: throws a C++ Napi::Error that
// node-addon-api turns into a JS exception at the binding boundary.
[[noreturn]] void Throw(Napi::Env env, Code code, const std::string& message);
[[noreturn]] void Throw(Napi::Env env, const Status& status);

}  // namespace kvxfer
