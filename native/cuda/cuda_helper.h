// kvxfer/cuda: the little CUDA a KV transfer needs around it (device
// memory, filling and reading it back, a device-side checksum, timed
// device-to-device copies), through the CUDA runtime loaded at run time
// (cuda_api.h), so tests, the benchmark and KV pools need no PyTorch.
//
// Every function is synchronous on the calling (JS) thread: it is a test and
// benchmark tool, not a data path. Pointers are process-wide, like CUDA's.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "status.h"

namespace kvxfer::cuda {

// The host twin of the device checksum (checksum.cu): the same value for the
// same bytes.
uint64_t HostChecksum(const uint8_t* bytes, uint64_t length);

// The helper's functions, as lib/cuda.ts calls them.
Napi::Object HelperExports(Napi::Env env);

}  // namespace kvxfer::cuda
