#pragma once

#include <uct/api/uct.h>

#include <functional>
#include <string>
#include <vector>

namespace kvxfer {

struct UcxTransport {
  std::string name;    // "tcp", "cma", "rc_mlx5", "cuda_ipc", ...
  std::string device;  // "lo", "memory", "mlx5_0:1", ...
};

std::string UcxVersion();
// Whether this UCX was built with thread support (NIXL's own agents need it).
bool UcxThreads();
// Every transport and device UCX can open on this machine, ignoring UCX_TLS.
std::vector<UcxTransport> UcxTransports();

// What the loaded UCX can do with CUDA memory: the memory domains that
// register it and the transports that move it (cuda_copy, cuda_ipc,
// gdr_copy; rc / dc carry it where GPUDirect RDMA is set up). Not
// `supported` with `reason` where no memory domain registers CUDA memory
// (Debian's UCX is built without CUDA).
struct UcxCudaSupport {
  bool supported = false;
  std::vector<std::string> memory_domains;
  std::vector<std::string> transports;
  std::string reason;
};
// Computed once per process (UCX's components do not change once loaded).
const UcxCudaSupport& QueryUcxCuda();
// Opens every memory domain of every UCX component in turn (those `want`
// accepts, when given), with its default configuration, and hands it to
// `visit` (then closes it).
void ForEachUcxMd(const std::function<void(uct_component_h component, const char* md_name, uct_md_h md)>& visit,
                  const std::function<bool(const char* md_name)>& want = nullptr);

}  // namespace kvxfer
