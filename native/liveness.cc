#include "liveness.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

namespace kvxfer {

namespace {

int PidfdOpen(uint32_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0));
#else
  errno = ENOSYS;
  return -1;
#endif
}

}  // namespace

Liveness::~Liveness() {
  for (auto& [peer, fd] : fds_) close(fd);
}

Liveness::Watch Liveness::Add(Peer* peer, const ProcessIdentity& self) {
  Remove(peer);
  const ProcessIdentity& theirs = peer->identity;
  if (!peer->identity_known || theirs.pid == 0 || !self.SameProcessSpace(theirs)) return Watch::kUnwatchable;
  const int fd = PidfdOpen(theirs.pid);
  if (fd < 0) return errno == ESRCH ? Watch::kGone : Watch::kUnwatchable;
  // Checked after the pidfd is open: the fd then names this process for
  // good, and if the start time matches it is the peer's, not a later
  // process that reused its pid.
  if (theirs.start_time != 0 && ProcessStartTime(theirs.pid) != theirs.start_time) {
    close(fd);
    return Watch::kGone;
  }
  fds_.emplace(peer, fd);
  return Watch::kWatching;
}

void Liveness::Remove(Peer* peer) {
  auto it = fds_.find(peer);
  if (it == fds_.end()) return;
  close(it->second);
  fds_.erase(it);
}

void Liveness::AppendPollFds(std::vector<pollfd>* fds) const {
  for (const auto& [peer, fd] : fds_) fds->push_back(pollfd{fd, POLLIN, 0});
}

void Liveness::Collect(std::vector<Peer*>* dead) {
  if (fds_.empty()) return;
  std::vector<pollfd> fds;
  std::vector<Peer*> peers;
  fds.reserve(fds_.size());
  for (const auto& [peer, fd] : fds_) {
    fds.push_back(pollfd{fd, POLLIN, 0});
    peers.push_back(peer);
  }
  int n;
  do {
    n = poll(fds.data(), fds.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return;
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].revents == 0) continue;
    dead->push_back(peers[i]);
    Remove(peers[i]);
  }
}

bool Liveness::Gone(Peer* peer) {
  auto it = fds_.find(peer);
  if (it == fds_.end()) return false;
  pollfd fd{it->second, POLLIN, 0};
  int n;
  do {
    n = poll(&fd, 1, 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  Remove(peer);
  return true;
}

void StallWatch::Started(uint32_t token, Peer* peer, uint64_t now_ns) {
  Watch& watch = peers_[peer];
  watch.peer = peer;
  if (watch.in_flight++ == 0) {
    watch.moved_ns = now_ns;
    watch.reported = false;
  }
  if (token >= by_token_.size()) by_token_.resize(token + 1, nullptr);
  by_token_[token] = &watch;
}

void StallWatch::Finished(uint32_t token, uint64_t now_ns) {
  if (token >= by_token_.size() || by_token_[token] == nullptr) return;
  Watch* watch = by_token_[token];
  by_token_[token] = nullptr;
  --watch->in_flight;
  watch->moved_ns = now_ns;
  watch->reported = false;
}

void StallWatch::Forget(Peer* peer) {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return;
  for (Watch*& slot : by_token_) {
    if (slot == &it->second) slot = nullptr;
  }
  peers_.erase(it);
}

void StallWatch::Collect(uint64_t now_ns, std::vector<Peer*>* stalled) {
  for (auto& [peer, watch] : peers_) {
    if (watch.in_flight == 0 || watch.reported || now_ns - watch.moved_ns < timeout_ns_) continue;
    watch.reported = true;
    stalled->push_back(peer);
  }
}

uint64_t CoarseNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace kvxfer
