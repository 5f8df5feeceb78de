#include "ucx/ucx_defaults.h"

#include <cstdlib>
#include <cstring>

namespace kvxfer {

bool AllowsSharedMemory(const std::string& tls) {
  // Empty is UCX's "all"; a leading '^' excludes, and whatever it excludes,
  // shared memory may be left.
  if (tls.empty() || tls[0] == '^') return true;
  for (const char* name : {"sm", "shm", "posix", "sysv", "all"}) {
    if (tls.find(name) != std::string::npos) return true;
  }
  return false;
}

bool AllowsCma(const std::string& tls) {
  if (tls.empty()) return true;
  const bool excluding = tls[0] == '^';
  bool named = false;
  size_t from = excluding ? 1 : 0;
  while (from <= tls.size()) {
    size_t comma = tls.find(',', from);
    if (comma == std::string::npos) comma = tls.size();
    const std::string name = tls.substr(from, comma - from);
    named |= name == "cma" || name == "sm" || name == "shm" || name == "all";
    from = comma + 1;
  }
  return excluding != named;
}

bool CopiesAcrossProcesses(const std::string& transports) {
  const char* direct = std::getenv("KVXFER_UCX_DIRECT_COPY");
  if (direct != nullptr && std::strcmp(direct, "0") == 0) return false;
  const char* env_tls = std::getenv("UCX_TLS");
  return AllowsCma(!transports.empty() ? transports : env_tls != nullptr ? env_tls : "");
}

std::vector<std::pair<std::string, std::string>> UcxDefaults(const std::string& transports) {
  std::vector<std::pair<std::string, std::string>> settings;
  auto set = [&](const char* key, const char* value) {
    if (std::getenv(("UCX_" + std::string(key)).c_str()) == nullptr) settings.emplace_back(key, value);
  };
  const char* env_tls = std::getenv("UCX_TLS");
  const std::string tls = !transports.empty() ? transports : env_tls != nullptr ? env_tls : "";
  // Every endpoint asks for peer error handling, and UCX then drops its
  // shared-memory transports unless they are told to report peer failures
  // (off by default). UCX 1.13 takes these only from the environment
  // (PrepareUcxEnvironment); NIXL's engine_config reaches newer UCX too.
  // Only where they can be used: UCX warns about settings nothing read.
  if (AllowsSharedMemory(tls)) {
    set("POSIX_ERROR_HANDLING", "y");
    set("SYSV_ERROR_HANDLING", "y");
  }
  // UCX's keepalive finds a peer on another host that died while idle (an
  // RDMA queue pair gets no reset); 20 s by default, 2 s here.
  set("KEEPALIVE_INTERVAL", "2s");
  return settings;
}

}  // namespace kvxfer
