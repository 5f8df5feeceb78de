// Same-host peer liveness: the owner thread holds a pidfd for the process of
// every loaded peer that lives on this host in this pid namespace, and polls
// them with its other fds, so a peer that dies (SIGKILL included) is known
// within a millisecond, with no keepalive and no caller's timeout. Peers on
// other hosts, or in other pid namespaces, are left to the engine (UCX
// keepalive, the transport's own errors). Owner thread only.
#pragma once

#include <poll.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "engine.h"
#include "identity.h"

namespace kvxfer {

class Liveness {
 public:
  enum class Watch : uint8_t {
    kWatching,     // a pidfd is open for the peer's process
    kGone,         // its process no longer runs (or its pid belongs to another process now)
    kUnwatchable,  // another host or pid namespace, no identity, or no pidfd here
  };

  Liveness() = default;
  ~Liveness();
  Liveness(const Liveness&) = delete;
  Liveness& operator=(const Liveness&) = delete;

  Watch Add(Peer* peer, const ProcessIdentity& self);
  void Remove(Peer* peer);
  bool Watching(Peer* peer) const { return fds_.count(peer) != 0; }
  bool empty() const { return fds_.empty(); }

  // Appends one pollfd per watched peer to `fds`.
  void AppendPollFds(std::vector<pollfd>* fds) const;
  // Peers whose process has ended since the last call (each reported once,
  // and no longer watched). Makes one poll(2) with no timeout.
  void Collect(std::vector<Peer*>* dead);
  // Whether the watched peer's process has ended (then it is no longer
  // watched). False when not watched.
  bool Gone(Peer* peer);

 private:
  std::unordered_map<Peer*, int> fds_;
};

}  // namespace kvxfer
