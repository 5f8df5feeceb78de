#include "cuda/cuda_helper.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "agent/convert.h"
#include "cuda/checksum_ptx.h"
#include "cuda/cuda_api.h"

namespace kvxfer::cuda {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // checksum.cu's
constexpr unsigned kChecksumThreads = 256;
constexpr unsigned kChecksumMaxBlocks = 4096;
// The host fallback of checksum() reads device memory back in pieces this big.
constexpr uint64_t kReadBackChunk = 64ull << 20;

uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The sum over the whole words of `bytes`, numbered from `first_word`.
uint64_t SumWords(const uint8_t* bytes, uint64_t words, uint64_t first_word) {
  uint64_t sum = 0;
  for (uint64_t i = 0; i < words; ++i) {
    uint64_t word;
    std::memcpy(&word, bytes + i * 8, 8);
    sum += Mix(word ^ ((first_word + i) * kGolden));
  }
  return sum;
}

// The last, partial word (1 to 7 bytes), zero-padded.
uint64_t TailTerm(const uint8_t* tail, uint64_t tail_bytes, uint64_t word_index) {
  uint64_t word = 0;
  std::memcpy(&word, tail, tail_bytes);
  return Mix(word ^ (word_index * kGolden));
}

std::string RuntimeErrorText(const Runtime& rt, cudaError_t error) {
  const char* name = rt.cudaGetErrorName(error);
  const char* text = rt.cudaGetErrorString(error);
  return std::string(name ? name : "cudaError") + " (" + (text ? text : "?") + ")";
}

void Check(Napi::Env env, const Runtime& rt, cudaError_t error, const std::string& what) {
  if (error == kCudaRtSuccess) return;
  const char* name = rt.cudaGetErrorName(error);
  Throw(env, Status::Engine(Code::kEngine, what + " failed: " + RuntimeErrorText(rt, error), name ? name : "",
                            error));
}

struct Allocation {
  int device;
  uint64_t bytes;
};

// What malloc() handed out, by address: tells each later call which device a
// pointer is on and how far it reaches. Process-wide, as the pointers are.
struct Allocations {
  std::mutex mutex;
  std::map<uint64_t, Allocation> by_address;
};
Allocations& TheAllocations() {
  static Allocations* allocations = new Allocations();  // never destroyed: freed pointers may outlive exit
  return *allocations;
}

// The device a span [address, address + bytes) of device memory is on;
// throws unless the whole span is in one allocation.
int DeviceOf(Napi::Env env, uint64_t address, uint64_t bytes, const char* what) {
  {
    Allocations& allocations = TheAllocations();
    std::lock_guard<std::mutex> lock(allocations.mutex);
    auto it = allocations.by_address.upper_bound(address);
    if (it != allocations.by_address.begin()) {
      --it;
      const uint64_t offset = address - it->first;
      if (offset < it->second.bytes) {
        if (bytes > it->second.bytes - offset) {
          Throw(env, Code::kOutOfRange,
                std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                    " run past the allocation's " + std::to_string(it->second.bytes));
        }
        return it->second.device;
      }
    }
  }
  // Memory from elsewhere in the process (PyTorch, another library): the
  // driver knows it.
  const Driver* driver = LoadedDriver();
  unsigned memory_type = 0;
  int ordinal = -1;
  if (driver != nullptr &&
      driver->cuPointerGetAttribute(&memory_type, kPointerAttributeMemoryType, address) == kCudaSuccess &&
      memory_type == kMemoryTypeDevice &&
      driver->cuPointerGetAttribute(&ordinal, kPointerAttributeDeviceOrdinal, address) == kCudaSuccess) {
    CUdeviceptr start = 0;
    size_t size = 0;
    if (driver->cuPointerGetAttribute(&start, kPointerAttributeRangeStartAddr, address) == kCudaSuccess &&
        driver->cuPointerGetAttribute(&size, kPointerAttributeRangeSize, address) == kCudaSuccess &&
        bytes > start + size - address) {
      Throw(env, Code::kOutOfRange, std::string(what) + ": " + std::to_string(bytes) +
                                        " bytes run past the end of their CUDA allocation");
    }
    return ordinal;
  }
  char hex[24];
  std::snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(address));
  Throw(env, Code::kInvalidArg, std::string(what) + ": " + hex + " is not CUDA device memory");
}

// Why CUDA has no device here, in the words that help: a missing driver
// is said as such (the runtime alone calls it "insufficient").
std::string NoDeviceReason(const Runtime& rt, cudaError_t error) {
  std::string driver_why;
  if (LoadDriver(&driver_why) == nullptr) return "no NVIDIA driver: " + driver_why;
  if (error == kCudaRtSuccess) return "the CUDA driver reports no device";
  return "cudaGetDeviceCount: " + RuntimeErrorText(rt, error);
}

// The runtime with at least one device (`device_count` of them, when
// asked), or a KvxferError saying why not.
const Runtime& Require(Napi::Env env, int* device_count = nullptr) {
  std::string why;
  const Runtime* rt = LoadRuntime(&why);
  if (rt == nullptr) Throw(env, Code::kEngine, "CUDA is unavailable: " + why);
  int count = 0;
  const cudaError_t error = rt->cudaGetDeviceCount(&count);
  if (error != kCudaRtSuccess || count == 0) {
    rt->cudaGetLastError();
    Throw(env, Code::kEngine, "CUDA has no usable device: " + NoDeviceReason(*rt, error));
  }
  if (device_count != nullptr) *device_count = count;
  return *rt;
}

void SetDevice(Napi::Env env, const Runtime& rt, int device) {
  Check(env, rt, rt.cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
}

// Direct access between two devices where the hardware allows it (NVLink,
// PCIe P2P), so copies between them do not bounce through the host.
void EnablePeerAccess(const Runtime& rt, int a, int b) {
  if (a == b) return;
  for (auto [from, to] : {std::pair{a, b}, std::pair{b, a}}) {
    int can = 0;
    if (rt.cudaDeviceCanAccessPeer(&can, from, to) != kCudaRtSuccess || can == 0) continue;
    if (rt.cudaSetDevice(from) != kCudaRtSuccess) continue;
    // Already enabled is the usual answer after the first call; any other
    // failure only leaves the copies to go through the host, still correct.
    const cudaError_t error = rt.cudaDeviceEnablePeerAccess(to, 0);
    if (error != kCudaRtSuccess) rt.cudaGetLastError();
  }
}

// The checksum kernel of each device's primary context, loaded at first use.
struct Kernels {
  std::mutex mutex;
  std::map<int, CUfunction> by_device;
  std::map<int, std::string> failures;
};
Kernels& TheKernels() {
  static Kernels* kernels = new Kernels();
  return *kernels;
}

// Null with `why` set where the driver will not load the PTX (then the
// checksum runs on the host).
CUfunction ChecksumKernel(int device, std::string* why) {
  Kernels& kernels = TheKernels();
  std::lock_guard<std::mutex> lock(kernels.mutex);
  if (auto it = kernels.by_device.find(device); it != kernels.by_device.end()) return it->second;
  if (auto it = kernels.failures.find(device); it != kernels.failures.end()) {
    *why = it->second;
    return nullptr;
  }
  std::string reason;
  CUfunction function = nullptr;
  const Driver* driver = LoadDriver(&reason);
  if (driver != nullptr) {
    CUmodule module = nullptr;
    // CUDA 12 on makes the device's primary context current in
    // cudaSetDevice; before that only a runtime call that needs a context
    // does (cudaFree(nullptr) is the documented way).
    CUcontext context = nullptr;
    if (driver->cuCtxGetCurrent(&context) != kCudaSuccess || context == nullptr) {
      const Runtime* rt = LoadRuntime(nullptr);
      if (rt != nullptr) rt->cudaFree(nullptr);
    }
    CUresult r = driver->cuModuleLoadData(&module, kChecksumPtx);
    if (r == kCudaSuccess) r = driver->cuModuleGetFunction(&function, module, "kvxfer_checksum");
    if (r != kCudaSuccess) {
      function = nullptr;
      reason = "loading the checksum kernel: " + DriverErrorName(*driver, r);
    }
  }
  if (function == nullptr) {
    kernels.failures[device] = reason;
    *why = reason;
  } else {
    kernels.by_device[device] = function;
  }
  return function;
}

uint64_t DeviceChecksum(Napi::Env env, const Runtime& rt, CUfunction kernel, uint64_t address, uint64_t words) {
  void* sum = nullptr;
  Check(env, rt, rt.cudaMalloc(&sum, sizeof(uint64_t)), "cudaMalloc of the checksum's sum");
  uint64_t result = 0;
  cudaError_t error = rt.cudaMemset(sum, 0, sizeof(uint64_t));
  CUresult launched = kCudaSuccess;
  if (error == kCudaRtSuccess) {
    CUdeviceptr words_pointer = address;
    CUdeviceptr sum_pointer = reinterpret_cast<CUdeviceptr>(sum);
    unsigned long long count = words;
    void* params[] = {&words_pointer, &count, &sum_pointer};
    const uint64_t blocks_needed = (words + kChecksumThreads - 1) / kChecksumThreads;
    const unsigned blocks = static_cast<unsigned>(std::min<uint64_t>(blocks_needed, kChecksumMaxBlocks));
    launched = LoadDriver(nullptr)->cuLaunchKernel(kernel, blocks, 1, 1, kChecksumThreads, 1, 1, 0, nullptr,
                                                   params, nullptr);
    // On the default stream after the launch: waits for it.
    if (launched == kCudaSuccess) error = rt.cudaMemcpy(&result, sum, sizeof(uint64_t), kMemcpyDeviceToHost);
  }
  rt.cudaFree(sum);
  if (launched != kCudaSuccess) {
    Throw(env, Status::Engine(Code::kEngine, "launching the checksum kernel failed",
                              DriverErrorName(*LoadDriver(nullptr), launched), launched));
  }
  Check(env, rt, error, "the checksum kernel");
  return result;
}

uint64_t HostChecksumOfDevice(Napi::Env env, const Runtime& rt, uint64_t address, uint64_t words) {
  std::vector<uint8_t> chunk(static_cast<size_t>(std::min(words * 8, kReadBackChunk)));
  uint64_t sum = 0;
  for (uint64_t word = 0; word < words;) {
    const uint64_t n = std::min<uint64_t>(words - word, chunk.size() / 8);
    Check(env, rt,
          rt.cudaMemcpy(chunk.data(), reinterpret_cast<const void*>(address + word * 8), n * 8, kMemcpyDeviceToHost),
          "reading device memory back");
    sum += SumWords(chunk.data(), n, word);
    word += n;
  }
  return sum;
}

void* Pointer(uint64_t address) { return reinterpret_cast<void*>(address); }

// Before a copy of `bytes` from `source` to `target`, device memory both:
// checks both spans, lets the devices reach each other where they can, and
// makes the source's device current (its stream carries the copy).
void PrepareCopy(Napi::Env env, const Runtime& rt, uint64_t target, uint64_t source, uint64_t bytes,
                 const std::string& what) {
  const int target_device = DeviceOf(env, target, bytes, (what + " target").c_str());
  const int source_device = DeviceOf(env, source, bytes, (what + " source").c_str());
  EnablePeerAccess(rt, source_device, target_device);
  SetDevice(env, rt, source_device);
}

// status() -> { available, deviceCount, reason?, runtime?, runtimeVersion?,
// driverVersion?, devices? }
Napi::Value HelperStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  std::string why;
  const Runtime* rt = LoadRuntime(&why);
  int count = 0;
  if (rt != nullptr) {
    out.Set("runtime", rt->path);
    int version = 0;
    if (rt->cudaRuntimeGetVersion(&version) == kCudaRtSuccess) out.Set("runtimeVersion", version);
    const cudaError_t error = rt->cudaGetDeviceCount(&count);
    if (error != kCudaRtSuccess) {
      rt->cudaGetLastError();
      count = 0;
    }
    if (count == 0) why = NoDeviceReason(*rt, error);
    version = 0;
    if (rt->cudaDriverGetVersion(&version) == kCudaRtSuccess && version > 0) out.Set("driverVersion", version);
  }
  out.Set("available", count > 0);
  out.Set("deviceCount", count);
  if (count == 0) {
    out.Set("reason", why);
    return out;
  }
  Napi::Array devices = Napi::Array::New(env);
  const Driver* driver = LoadDriver(nullptr);
  for (int i = 0; i < count; ++i) {
    Napi::Object device = Napi::Object::New(env);
    device.Set("index", i);
    char name[256] = {0};
    CUdevice handle = 0;
    if (driver != nullptr && driver->cuDeviceGet(&handle, i) == kCudaSuccess &&
        driver->cuDeviceGetName(name, sizeof(name) - 1, handle) == kCudaSuccess) {
      device.Set("name", name);
    }
    devices.Set(static_cast<uint32_t>(i), device);
  }
  out.Set("devices", devices);
  return out;
}

// malloc(device, bytes) -> bigint
Napi::Value HelperMalloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t device = ToU32(env, info[0], "device");
  const uint64_t bytes = ToU64(env, info[1], "bytes");
  if (bytes == 0) Throw(env, Code::kInvalidArg, "bytes must be greater than 0");
  int count = 0;
  const Runtime& rt = Require(env, &count);
  if (device >= static_cast<uint32_t>(count)) {
    Throw(env, Code::kInvalidArg,
          "device " + std::to_string(device) + " does not exist (this machine has " + std::to_string(count) + ")");
  }
  SetDevice(env, rt, static_cast<int>(device));
  void* pointer = nullptr;
  Check(env, rt, rt.cudaMalloc(&pointer, bytes),
        "cudaMalloc of " + std::to_string(bytes) + " bytes on device " + std::to_string(device));
  const uint64_t address = reinterpret_cast<uint64_t>(pointer);
  Allocations& allocations = TheAllocations();
  std::lock_guard<std::mutex> lock(allocations.mutex);
  allocations.by_address[address] = {static_cast<int>(device), bytes};
  return Napi::BigInt::New(env, address);
}

// free(pointer): only what malloc() returned, once.
Napi::Value HelperFree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t address = ToU64(env, info[0], "pointer");
  const Runtime& rt = Require(env);
  Allocation allocation{};
  {
    Allocations& allocations = TheAllocations();
    std::lock_guard<std::mutex> lock(allocations.mutex);
    auto it = allocations.by_address.find(address);
    if (it == allocations.by_address.end()) {
      Throw(env, Code::kInvalidArg, "free(): the pointer was not returned by malloc(), or was freed already");
    }
    allocation = it->second;
  }
  SetDevice(env, rt, allocation.device);
  Check(env, rt, rt.cudaFree(Pointer(address)), "cudaFree");
  Allocations& allocations = TheAllocations();
  std::lock_guard<std::mutex> lock(allocations.mutex);
  allocations.by_address.erase(address);
  return env.Undefined();
}

// fill(pointer, byte, bytes)
Napi::Value HelperFill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t address = ToU64(env, info[0], "pointer");
  const uint32_t value = ToU32(env, info[1], "byte");
  const uint64_t bytes = ToU64(env, info[2], "bytes");
  if (value > 255) Throw(env, Code::kInvalidArg, "byte must be 0 to 255");
  const Runtime& rt = Require(env);
  SetDevice(env, rt, DeviceOf(env, address, bytes, "fill()"));
  Check(env, rt, rt.cudaMemset(Pointer(address), static_cast<int>(value), bytes), "cudaMemset");
  Check(env, rt, rt.cudaDeviceSynchronize(), "cudaMemset");
  return env.Undefined();
}

// copyFromHost(pointer, bytes: Uint8Array)
Napi::Value HelperCopyFromHost(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t address = ToU64(env, info[0], "pointer");
  Napi::Uint8Array source = ToBytes(env, info[1], "source");
  const Runtime& rt = Require(env);
  SetDevice(env, rt, DeviceOf(env, address, source.ByteLength(), "copyFromHost()"));
  Check(env, rt, rt.cudaMemcpy(Pointer(address), source.Data(), source.ByteLength(), kMemcpyHostToDevice),
        "cudaMemcpy host to device");
  // From pageable memory cudaMemcpy may return once the bytes are staged,
  // before they land; UCX's CUDA transports copy on streams of their own,
  // unordered with this one, so a transfer posted next could read old bytes.
  Check(env, rt, rt.cudaDeviceSynchronize(), "cudaMemcpy host to device");
  return env.Undefined();
}

// copyToHost(bytes: Uint8Array, pointer)
Napi::Value HelperCopyToHost(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Uint8Array target = ToBytes(env, info[0], "target");
  const uint64_t address = ToU64(env, info[1], "pointer");
  const Runtime& rt = Require(env);
  SetDevice(env, rt, DeviceOf(env, address, target.ByteLength(), "copyToHost()"));
  Check(env, rt, rt.cudaMemcpy(target.Data(), Pointer(address), target.ByteLength(), kMemcpyDeviceToHost),
        "cudaMemcpy device to host");
  return env.Undefined();
}

// checksum(pointer, bytes) -> bigint, computed on the device (on the host,
// from a read-back, where the driver will not load the kernel).
Napi::Value HelperChecksum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t address = ToU64(env, info[0], "pointer");
  const uint64_t bytes = ToU64(env, info[1], "bytes");
  if (address % 8 != 0) Throw(env, Code::kInvalidArg, "checksum(): the pointer must be 8-byte aligned");
  const Runtime& rt = Require(env);
  const int device = DeviceOf(env, address, bytes, "checksum()");
  SetDevice(env, rt, device);
  const uint64_t words = bytes / 8;
  const uint64_t tail_bytes = bytes % 8;
  uint64_t sum = 0;
  if (words > 0) {
    std::string why;
    CUfunction kernel = ChecksumKernel(device, &why);
    sum = kernel != nullptr ? DeviceChecksum(env, rt, kernel, address, words)
                            : HostChecksumOfDevice(env, rt, address, words);
  }
  if (tail_bytes > 0) {
    uint8_t tail[8] = {0};
    Check(env, rt, rt.cudaMemcpy(tail, Pointer(address + words * 8), tail_bytes, kMemcpyDeviceToHost),
          "reading the checksum's last bytes");
    sum += TailTerm(tail, tail_bytes, words);
  }
  return Napi::BigInt::New(env, sum);
}

// checksumHost(bytes: Uint8Array) -> bigint
Napi::Value HelperChecksumHost(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Uint8Array bytes = ToBytes(env, info[0], "bytes");
  return Napi::BigInt::New(env, HostChecksum(bytes.Data(), bytes.ByteLength()));
}

// Whether checksum() runs on `device` (else on the host): { device: bool,
// reason? }.
Napi::Value HelperChecksumPlacement(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t device = ToU32(env, info[0], "device");
  const Runtime& rt = Require(env);
  SetDevice(env, rt, static_cast<int>(device));
  std::string why;
  Napi::Object out = Napi::Object::New(env);
  out.Set("onDevice", ChecksumKernel(static_cast<int>(device), &why) != nullptr);
  if (!why.empty()) out.Set("reason", why);
  return out;
}

// memcpy(target, source, bytes): device to device (another device's too),
// finished when it returns.
Napi::Value HelperMemcpy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t target = ToU64(env, info[0], "target");
  const uint64_t source = ToU64(env, info[1], "source");
  const uint64_t bytes = ToU64(env, info[2], "bytes");
  const Runtime& rt = Require(env);
  PrepareCopy(env, rt, target, source, bytes, "memcpy()");
  Check(env, rt, rt.cudaMemcpy(Pointer(target), Pointer(source), bytes, kMemcpyDefault), "cudaMemcpy");
  // Device-to-device cudaMemcpy does not wait for the copy.
  Check(env, rt, rt.cudaDeviceSynchronize(), "cudaMemcpy");
  return env.Undefined();
}

// timeMemcpy(target, source, bytes, iterations) -> seconds for all the
// copies, timed with CUDA events on the source device's stream after one
// untimed copy: the baseline `kvxfer bench --mem vram` compares with.
Napi::Value HelperTimeMemcpy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t target = ToU64(env, info[0], "target");
  const uint64_t source = ToU64(env, info[1], "source");
  const uint64_t bytes = ToU64(env, info[2], "bytes");
  const uint32_t iterations = ToU32(env, info[3], "iterations");
  if (bytes == 0 || iterations == 0) Throw(env, Code::kInvalidArg, "bytes and iterations must be greater than 0");
  const Runtime& rt = Require(env);
  PrepareCopy(env, rt, target, source, bytes, "timeMemcpy()");
  cudaEvent_t start = nullptr;
  cudaEvent_t end = nullptr;
  Check(env, rt, rt.cudaEventCreate(&start), "cudaEventCreate");
  cudaError_t error = rt.cudaEventCreate(&end);
  float ms = 0;
  if (error == kCudaRtSuccess) error = rt.cudaMemcpy(Pointer(target), Pointer(source), bytes, kMemcpyDefault);
  if (error == kCudaRtSuccess) error = rt.cudaEventRecord(start, nullptr);
  for (uint32_t i = 0; i < iterations && error == kCudaRtSuccess; ++i) {
    error = rt.cudaMemcpyAsync(Pointer(target), Pointer(source), bytes, kMemcpyDefault, nullptr);
  }
  if (error == kCudaRtSuccess) error = rt.cudaEventRecord(end, nullptr);
  if (error == kCudaRtSuccess) error = rt.cudaEventSynchronize(end);
  if (error == kCudaRtSuccess) error = rt.cudaEventElapsedTime(&ms, start, end);
  rt.cudaEventDestroy(start);
  if (end != nullptr) rt.cudaEventDestroy(end);
  Check(env, rt, error, "timing cudaMemcpy");
  return Napi::Number::New(env, static_cast<double>(ms) / 1000.0);
}

// canAccessPeer(device, peer) -> boolean
Napi::Value HelperCanAccessPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t device = ToU32(env, info[0], "device");
  const uint32_t peer = ToU32(env, info[1], "peer");
  const Runtime& rt = Require(env);
  int can = 0;
  Check(env, rt, rt.cudaDeviceCanAccessPeer(&can, static_cast<int>(device), static_cast<int>(peer)),
        "cudaDeviceCanAccessPeer");
  return Napi::Boolean::New(env, can != 0);
}

}  // namespace

uint64_t HostChecksum(const uint8_t* bytes, uint64_t length) {
  const uint64_t words = length / 8;
  uint64_t sum = SumWords(bytes, words, 0);
  if (length % 8 != 0) sum += TailTerm(bytes + words * 8, length % 8, words);
  return sum;
}

Napi::Object HelperExports(Napi::Env env) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("status", Napi::Function::New(env, HelperStatus, "status"));
  out.Set("malloc", Napi::Function::New(env, HelperMalloc, "malloc"));
  out.Set("free", Napi::Function::New(env, HelperFree, "free"));
  out.Set("fill", Napi::Function::New(env, HelperFill, "fill"));
  out.Set("copyFromHost", Napi::Function::New(env, HelperCopyFromHost, "copyFromHost"));
  out.Set("copyToHost", Napi::Function::New(env, HelperCopyToHost, "copyToHost"));
  out.Set("checksum", Napi::Function::New(env, HelperChecksum, "checksum"));
  out.Set("checksumHost", Napi::Function::New(env, HelperChecksumHost, "checksumHost"));
  out.Set("checksumPlacement", Napi::Function::New(env, HelperChecksumPlacement, "checksumPlacement"));
  out.Set("memcpy", Napi::Function::New(env, HelperMemcpy, "memcpy"));
  out.Set("timeMemcpy", Napi::Function::New(env, HelperTimeMemcpy, "timeMemcpy"));
  out.Set("canAccessPeer", Napi::Function::New(env, HelperCanAccessPeer, "canAccessPeer"));
  return out;
}

}  // namespace kvxfer::cuda
