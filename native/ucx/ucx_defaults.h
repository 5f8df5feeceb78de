// The UCX settings kvxfer changes from UCX's own defaults, for one agent. No
// UCX headers: the NIXL engine, which reaches UCX only through NIXL, uses
// them too.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kvxfer {

// KEY (UCX_KEY without its prefix) and value, for ucp_config_modify or
// NIXL's engine_config. `transports` is the agent's UCX_TLS (empty: the
// environment's). A setting the user made in the environment (UCX_KEY) is
// left out: theirs wins.
std::vector<std::pair<std::string, std::string>> UcxDefaults(const std::string& transports);

// Whether a UCX_TLS value leaves shared-memory transports in.
bool AllowsSharedMemory(const std::string& tls);

// Whether a UCX_TLS value leaves cma in: named (itself, or as sm, shm or
// all), or not excluded by a '^' list.
bool AllowsCma(const std::string& tls);

// Whether the UCX engine copies into and out of other processes on this host
// itself (KVXFER_UCX_DIRECT_COPY not 0) with the kernel's copy allowed (cma
// left in the agent's transports, or UCX_TLS where it has none).
bool CopiesAcrossProcesses(const std::string& transports);

}  // namespace kvxfer
