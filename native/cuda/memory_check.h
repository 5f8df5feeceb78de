// Whether caller-owned memory is what its registration says it is: a host
// pointer registered as VRAM, or a device pointer as DRAM, would reach the
// engine with the wrong memory type and fail far from the mistake (or, for
// DRAM, be read through a host mapping that is not there).
#pragma once

#include <cstdint>

#include "protocol.h"
#include "status.h"

namespace kvxfer::cuda {

// Asks the CUDA driver (cuPointerGetAttribute) about [address, address +
// length). VRAM must be device (or managed) memory of `device`, the whole
// range inside one allocation; without a driver no VRAM can exist, so it
// is refused. DRAM is refused when it is device memory, asked only where
// this process already loaded the driver (a process without CUDA holds no
// device pointers). Other kinds pass. Any thread.
Status CheckMemoryType(MemKind kind, uint64_t address, uint64_t length, uint32_t device);

}  // namespace kvxfer::cuda
