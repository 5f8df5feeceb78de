#include "cuda/cuda_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace kvxfer::cuda {

namespace {

template <typename Fn>
bool Resolve(void* library, const char* symbol, Fn* out, std::string* why) {
  *out = reinterpret_cast<Fn>(dlsym(library, symbol));
  if (*out == nullptr) *why = std::string("it has no ") + symbol;
  return *out != nullptr;
}

#define KVXFER_RESOLVE(lib, table, fn) Resolve(lib, #fn, &(table).fn, why)

bool ResolveDriver(void* lib, Driver* d, std::string* why) {
  return KVXFER_RESOLVE(lib, *d, cuInit) && KVXFER_RESOLVE(lib, *d, cuDriverGetVersion) &&
         KVXFER_RESOLVE(lib, *d, cuDeviceGetCount) && KVXFER_RESOLVE(lib, *d, cuDeviceGet) &&
         KVXFER_RESOLVE(lib, *d, cuDeviceGetName) && KVXFER_RESOLVE(lib, *d, cuPointerGetAttribute) &&
         KVXFER_RESOLVE(lib, *d, cuModuleLoadData) && KVXFER_RESOLVE(lib, *d, cuModuleGetFunction) &&
         KVXFER_RESOLVE(lib, *d, cuLaunchKernel) && KVXFER_RESOLVE(lib, *d, cuCtxGetCurrent) &&
         KVXFER_RESOLVE(lib, *d, cuGetErrorName);
}

bool ResolveRuntime(void* lib, Runtime* r, std::string* why) {
  return KVXFER_RESOLVE(lib, *r, cudaRuntimeGetVersion) && KVXFER_RESOLVE(lib, *r, cudaDriverGetVersion) &&
         KVXFER_RESOLVE(lib, *r, cudaGetDeviceCount) && KVXFER_RESOLVE(lib, *r, cudaSetDevice) &&
         KVXFER_RESOLVE(lib, *r, cudaMalloc) && KVXFER_RESOLVE(lib, *r, cudaFree) &&
         KVXFER_RESOLVE(lib, *r, cudaMemset) && KVXFER_RESOLVE(lib, *r, cudaMemcpy) &&
         KVXFER_RESOLVE(lib, *r, cudaMemcpyAsync) && KVXFER_RESOLVE(lib, *r, cudaDeviceSynchronize) &&
         KVXFER_RESOLVE(lib, *r, cudaDeviceCanAccessPeer) && KVXFER_RESOLVE(lib, *r, cudaDeviceEnablePeerAccess) &&
         KVXFER_RESOLVE(lib, *r, cudaEventCreate) && KVXFER_RESOLVE(lib, *r, cudaEventRecord) &&
         KVXFER_RESOLVE(lib, *r, cudaEventSynchronize) && KVXFER_RESOLVE(lib, *r, cudaEventElapsedTime) &&
         KVXFER_RESOLVE(lib, *r, cudaEventDestroy) && KVXFER_RESOLVE(lib, *r, cudaGetLastError) &&
         KVXFER_RESOLVE(lib, *r, cudaGetErrorName) && KVXFER_RESOLVE(lib, *r, cudaGetErrorString);
}

#undef KVXFER_RESOLVE

struct DriverSlot {
  std::once_flag once;
  Driver driver{};
  bool loaded = false;
  std::string why;
};

DriverSlot& TheDriver() {
  static DriverSlot slot;
  return slot;
}

}  // namespace

const Driver* LoadDriver(std::string* why) {
  DriverSlot& slot = TheDriver();
  std::call_once(slot.once, [&slot] {
    // Never closed: CUDA keeps threads and state that outlive any handle.
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* error = dlerror();
      slot.why = std::string("the CUDA driver (libcuda.so.1) cannot be loaded: ") + (error ? error : "not found");
      return;
    }
    std::string missing;
    if (!ResolveDriver(lib, &slot.driver, &missing)) {
      slot.why = "the CUDA driver (libcuda.so.1) is too old: " + missing;
      return;
    }
    slot.driver.init_result = slot.driver.cuInit(0);
    slot.loaded = true;
  });
  if (!slot.loaded && why != nullptr) *why = slot.why;
  return slot.loaded ? &slot.driver : nullptr;
}

const Driver* LoadedDriver() {
  void* already = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (already == nullptr) return nullptr;
  dlclose(already);  // drops only the reference RTLD_NOLOAD added
  return LoadDriver(nullptr);
}

const Runtime* LoadRuntime(std::string* why) {
  static std::once_flag once;
  static Runtime runtime{};
  static bool loaded = false;
  static std::string failure;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* path = std::getenv("KVXFER_CUDART"); path != nullptr && *path != '\0') {
      candidates.emplace_back(path);
    } else {
      for (const char* name : {"libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"}) {
        candidates.emplace_back(name);
      }
      for (const char* name : {"libcudart.so", "libcudart.so.13", "libcudart.so.12"}) {
        candidates.emplace_back(std::string("/usr/local/cuda/lib64/") + name);
      }
    }
    std::string tried;
    for (const std::string& candidate : candidates) {
      void* lib = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib == nullptr) {
        const char* error = dlerror();
        tried += "\n  " + candidate + ": " + (error ? error : "not found");
        continue;
      }
      std::string missing;
      if (!ResolveRuntime(lib, &runtime, &missing)) {
        tried += "\n  " + candidate + ": " + missing;
        dlclose(lib);
        continue;
      }
      runtime.path = candidate;
      loaded = true;
      return;
    }
    failure = "the CUDA runtime (libcudart) cannot be loaded; set KVXFER_CUDART to its path. Tried:" + tried;
  });
  if (!loaded && why != nullptr) *why = failure;
  return loaded ? &runtime : nullptr;
}

std::string DriverErrorName(const Driver& driver, CUresult result) {
  const char* name = nullptr;
  if (driver.cuGetErrorName(result, &name) == kCudaSuccess && name != nullptr) return name;
  return "CUresult " + std::to_string(result);
}

}  // namespace kvxfer::cuda
