// The memcpy baseline of `kvxfer bench`: how fast one thread copies between
// two page-aligned host buffers here. The bound a same-host transfer that is
// a single copy cannot beat.
#pragma once

#include <napi.h>

namespace kvxfer {

// memcpyBench(bytes, iterations) -> nanoseconds for `iterations` copies of
// `bytes` (after one untimed copy that faults the pages in). Runs on the
// calling thread: callers keep each call short.
Napi::Value MemcpyBench(const Napi::CallbackInfo& info);

}  // namespace kvxfer
