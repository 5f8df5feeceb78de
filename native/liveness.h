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

// Peers whose work stopped moving. Across hosts nothing else reports a peer
// that went silent (a cut link, a frozen host) in good time: TCP retries
// unacknowledged data for minutes, and UCX's keepalive does not cover an
// endpoint busy with data. So a peer with work in flight and no operation
// finished for `timeout_ns` is declared unreachable. Owner thread only.
class StallWatch {
 public:
  // 0: never.
  explicit StallWatch(uint64_t timeout_ns) : timeout_ns_(timeout_ns) {}
  StallWatch(const StallWatch&) = delete;
  StallWatch& operator=(const StallWatch&) = delete;

  bool enabled() const { return timeout_ns_ != 0; }
  uint64_t timeout_ns() const { return timeout_ns_; }
  // A transfer or notification `token` with `peer` was handed to the engine.
  void Started(uint32_t token, Peer* peer, uint64_t now_ns);
  // Its OperationDone: the peer's work moved.
  void Finished(uint32_t token, uint64_t now_ns);
  void Forget(Peer* peer);
  // Peers with work in flight and nothing finished for the timeout; each is
  // reported once, until its work moves again.
  void Collect(uint64_t now_ns, std::vector<Peer*>* stalled);

 private:
  struct Watch {
    Peer* peer = nullptr;
    uint32_t in_flight = 0;
    uint64_t moved_ns = 0;  // the last completion, or the start of the oldest in flight
    bool reported = false;
  };
  const uint64_t timeout_ns_;
  std::unordered_map<Peer*, Watch> peers_;  // node-based: Watch pointers stay valid
  std::vector<Watch*> by_token_;           // tokens are small slot numbers
};

// A cheap clock for the stall watch: coarse (milliseconds), never the hot path's cost.
uint64_t CoarseNowNs();

}  // namespace kvxfer
