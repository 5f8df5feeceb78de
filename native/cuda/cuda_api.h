// The CUDA driver (libcuda.so.1) and runtime (libcudart), loaded at run time
// with dlopen: the addon builds and runs without CUDA, and only the calls
// kvxfer makes are declared here, with the C ABI CUDA documents for them
// (no CUDA header is needed to build).
//
// Thread safety: loading is once per process (std::call_once); the CUDA
// calls themselves are thread-safe, as CUDA documents.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvxfer::cuda {

// Driver API (cuda.h).
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = struct CUctx_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;
using CUstream = struct CUstream_st*;

constexpr CUresult kCudaSuccess = 0;
constexpr CUresult kCudaErrorInvalidValue = 1;
constexpr CUresult kCudaErrorNotInitialized = 3;
constexpr CUresult kCudaErrorNoDevice = 100;

// CUpointer_attribute and CUmemorytype.
constexpr int kPointerAttributeMemoryType = 2;
constexpr int kPointerAttributeIsManaged = 8;
constexpr int kPointerAttributeDeviceOrdinal = 9;
constexpr int kPointerAttributeRangeStartAddr = 11;
constexpr int kPointerAttributeRangeSize = 12;
constexpr unsigned kMemoryTypeHost = 1;
constexpr unsigned kMemoryTypeDevice = 2;

struct Driver {
  CUresult (*cuInit)(unsigned flags);
  CUresult (*cuDriverGetVersion)(int* version);
  CUresult (*cuDeviceGetCount)(int* count);
  CUresult (*cuDeviceGet)(CUdevice* device, int ordinal);
  CUresult (*cuDeviceGetName)(char* name, int length, CUdevice device);
  CUresult (*cuPointerGetAttribute)(void* data, int attribute, CUdeviceptr pointer);
  CUresult (*cuModuleLoadData)(CUmodule* module, const void* image);
  CUresult (*cuModuleGetFunction)(CUfunction* function, CUmodule module, const char* name);
  CUresult (*cuLaunchKernel)(CUfunction f, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                             unsigned block_y, unsigned block_z, unsigned shared_bytes, CUstream stream,
                             void** params, void** extra);
  CUresult (*cuCtxGetCurrent)(CUcontext* context);
  CUresult (*cuGetErrorName)(CUresult error, const char** name);
  // cuInit(0)'s result: CUDA_ERROR_NO_DEVICE on a machine with a driver and
  // no GPU.
  CUresult init_result = kCudaErrorNotInitialized;
};

// Runtime API (cuda_runtime_api.h). cudaError_t is an int enum.
using cudaError_t = int;
using cudaStream_t = CUstream;
using cudaEvent_t = struct CUevent_st*;
constexpr cudaError_t kCudaRtSuccess = 0;
constexpr cudaError_t kCudaRtErrorPeerAccessAlreadyEnabled = 704;
constexpr int kMemcpyHostToDevice = 1;
constexpr int kMemcpyDeviceToHost = 2;
constexpr int kMemcpyDefault = 4;

struct Runtime {
  cudaError_t (*cudaRuntimeGetVersion)(int* version);
  cudaError_t (*cudaDriverGetVersion)(int* version);
  cudaError_t (*cudaGetDeviceCount)(int* count);
  cudaError_t (*cudaSetDevice)(int device);
  cudaError_t (*cudaMalloc)(void** pointer, size_t bytes);
  cudaError_t (*cudaFree)(void* pointer);
  cudaError_t (*cudaMemset)(void* pointer, int value, size_t bytes);
  cudaError_t (*cudaMemcpy)(void* dst, const void* src, size_t bytes, int kind);
  cudaError_t (*cudaMemcpyAsync)(void* dst, const void* src, size_t bytes, int kind, cudaStream_t stream);
  cudaError_t (*cudaDeviceSynchronize)();
  cudaError_t (*cudaDeviceCanAccessPeer)(int* can, int device, int peer);
  cudaError_t (*cudaDeviceEnablePeerAccess)(int peer, unsigned flags);
  cudaError_t (*cudaEventCreate)(cudaEvent_t* event);
  cudaError_t (*cudaEventRecord)(cudaEvent_t event, cudaStream_t stream);
  cudaError_t (*cudaEventSynchronize)(cudaEvent_t event);
  cudaError_t (*cudaEventElapsedTime)(float* ms, cudaEvent_t start, cudaEvent_t end);
  cudaError_t (*cudaEventDestroy)(cudaEvent_t event);
  cudaError_t (*cudaGetLastError)();
  const char* (*cudaGetErrorName)(cudaError_t error);
  const char* (*cudaGetErrorString)(cudaError_t error);
  std::string path;  // the library that loaded
};

// The driver, loaded and cuInit'ed on first call; null with `why` set where
// libcuda.so.1 cannot be loaded (no NVIDIA driver). cuInit's failure (no
// GPU) is not a load failure: see init_result.
const Driver* LoadDriver(std::string* why);
// The driver only if something in this process already loaded it (a CUDA
// user: PyTorch, our own kvxfer/cuda helper): a process that never touched
// CUDA cannot hold a device pointer, and is not made to load CUDA to learn it.
const Driver* LoadedDriver();
// The runtime: $KVXFER_CUDART when set, else libcudart.so and the sonames of
// CUDA 13, 12 and 11 on the loader path and under /usr/local/cuda.
const Runtime* LoadRuntime(std::string* why);

// "CUDA_ERROR_NO_DEVICE" and the like, for messages.
std::string DriverErrorName(const Driver& driver, CUresult result);

}  // namespace kvxfer::cuda
