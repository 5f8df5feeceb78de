#include "cuda/memory_check.h"

#include <cstdio>
#include <string>

#include "cuda/cuda_api.h"

namespace kvxfer::cuda {

namespace {

std::string Hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

template <typename T>
CUresult Attribute(const Driver& driver, int attribute, uint64_t address, T* out) {
  return driver.cuPointerGetAttribute(out, attribute, static_cast<CUdeviceptr>(address));
}

Status CheckVram(uint64_t address, uint64_t length, uint32_t device) {
  std::string why;
  const Driver* driver = LoadDriver(&why);
  if (driver == nullptr) {
    return Status::Error(Code::kInvalidArg, "cannot register VRAM at " + Hex(address) + ": " + why);
  }
  if (driver->init_result != kCudaSuccess) {
    return Status::Error(Code::kInvalidArg, "cannot register VRAM at " + Hex(address) + ": the CUDA driver has no "
                                                "usable device (cuInit: " +
                                                DriverErrorName(*driver, driver->init_result) + ")");
  }
  unsigned memory_type = 0;
  CUresult r = Attribute(*driver, kPointerAttributeMemoryType, address, &memory_type);
  // CUDA_ERROR_INVALID_VALUE: an address CUDA never mapped, i.e. ordinary
  // host memory.
  if (r != kCudaSuccess || memory_type != kMemoryTypeDevice) {
    return Status::Error(Code::kInvalidArg, Hex(address) +
                                                " is host memory, not a CUDA device allocation: register it as "
                                                "'dram' (or pass the pointer cudaMalloc returned)");
  }
  int ordinal = -1;
  if (Attribute(*driver, kPointerAttributeDeviceOrdinal, address, &ordinal) == kCudaSuccess &&
      ordinal != static_cast<int>(device)) {
    return Status::Error(Code::kInvalidArg, Hex(address) + " is memory of CUDA device " + std::to_string(ordinal) +
                                                ", registered as device " + std::to_string(device));
  }
  CUdeviceptr start = 0;
  size_t size = 0;
  if (Attribute(*driver, kPointerAttributeRangeStartAddr, address, &start) == kCudaSuccess &&
      Attribute(*driver, kPointerAttributeRangeSize, address, &size) == kCudaSuccess && size > 0) {
    const uint64_t end = static_cast<uint64_t>(start) + size;
    if (length > end - address) {
      return Status::Error(Code::kOutOfRange, "VRAM region " + Hex(address) + " + " + std::to_string(length) +
                                                  " bytes runs past its CUDA allocation (" + Hex(start) + " + " +
                                                  std::to_string(size) + " bytes)");
    }
  }
  return Status::Ok();
}

Status CheckDram(uint64_t address) {
  const Driver* driver = LoadedDriver();
  if (driver == nullptr || driver->init_result != kCudaSuccess) return Status::Ok();
  unsigned memory_type = 0;
  if (Attribute(*driver, kPointerAttributeMemoryType, address, &memory_type) != kCudaSuccess) return Status::Ok();
  if (memory_type != kMemoryTypeDevice) return Status::Ok();
  // Managed memory is reachable from the host: DRAM is a fair description.
  unsigned managed = 0;
  if (Attribute(*driver, kPointerAttributeIsManaged, address, &managed) == kCudaSuccess && managed != 0) {
    return Status::Ok();
  }
  int ordinal = 0;
  Attribute(*driver, kPointerAttributeDeviceOrdinal, address, &ordinal);
  return Status::Error(Code::kInvalidArg, Hex(address) + " is memory of CUDA device " + std::to_string(ordinal) +
                                              ": register it as 'vram' with device " + std::to_string(ordinal));
}

}  // namespace

Status CheckMemoryType(MemKind kind, uint64_t address, uint64_t length, uint32_t device) {
  switch (kind) {
    case MemKind::kVram:
      return CheckVram(address, length, device);
    case MemKind::kDram:
      return CheckDram(address);
    default:
      return Status::Ok();
  }
}

}  // namespace kvxfer::cuda
