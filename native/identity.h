// Who an agent is, beyond its name: which boot of which host, which process,
// and which incarnation of the agent. Carried in every engine's metadata so
// that a peer on the same host can watch the process (liveness.h), and a
// restarted or duplicate agent of the same name is told apart from the one
// already loaded.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace kvxfer {

struct ProcessIdentity {
  // Random, fresh for every agent: two agents never share one.
  uint64_t incarnation = 0;
  // /proc/sys/kernel/random/boot_id: the same on one host until it reboots.
  std::array<uint8_t, 16> boot_id{};
  uint32_t pid = 0;
  // When the process started, in clock ticks after boot (/proc/<pid>/stat
  // field 22): tells a process from a later one that reuses its pid.
  uint64_t start_time = 0;
  // The inode of /proc/<pid>/ns/pid: a pid means the same process only to
  // processes in the same pid namespace.
  uint64_t pid_namespace = 0;

  // Same boot of the same host and the same pid namespace: the pid can be
  // watched from here.
  bool SameProcessSpace(const ProcessIdentity& other) const {
    return boot_id == other.boot_id && pid_namespace == other.pid_namespace && boot_id != decltype(boot_id){};
  }
};

// This process, with a new incarnation id.
ProcessIdentity NewIdentity();

// The start time of `pid` as this process sees it, or 0 if there is no such
// process (or /proc cannot tell).
uint64_t ProcessStartTime(uint32_t pid);

std::string Hex64(uint64_t value);

}  // namespace kvxfer
