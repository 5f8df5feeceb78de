#pragma once

#include <string>
#include <vector>

namespace kvxfer {

struct UcxTransport {
  std::string name;    // "tcp", "cma", "rc_mlx5", "cuda_ipc", ...
  std::string device;  // "lo", "memory", "mlx5_0:1", ...
};

std::string UcxVersion();
// Every transport and device UCX can open on this machine, ignoring UCX_TLS.
std::vector<UcxTransport> UcxTransports();

}  // namespace kvxfer
