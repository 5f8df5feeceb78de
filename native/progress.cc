#include "progress.h"

#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "cuda/memory_check.h"
#include "host_memory.h"

namespace kvxfer {

namespace {

// While work is in flight the thread spins on progress; after this long with
// nothing happening it sleeps on the event fd in short naps, so a transfer
// stalled on a slow peer does not burn a core.
constexpr auto kSpinBeforeNap = std::chrono::microseconds(200);
// Past this much of that spin it yields its core between passes: where
// threads outnumber cores, the JS thread that will repost (or a peer's
// thread that will answer) may be waiting for it. Alone on its core, a yield
// returns at once.
constexpr auto kSpinBeforeYield = std::chrono::microseconds(20);
constexpr int kNapMs = 1;
// With nothing in flight it keeps polling this long before it sleeps: a
// caller posting back to back then never pays for a wake-up (an eventfd
// write and a context switch, several microseconds each post).
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(50);
constexpr size_t kCommandsPerPass = 16;
// While passes keep finding work the thread never sleeps on the peers'
// pidfds: it looks at them every this many passes (well under a millisecond).
constexpr unsigned kPassesPerLivenessCheck = 256;
constexpr int kPausesPerIdlePass = 8;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

EngineOptions WithIdentity(EngineOptions options) {
  options.identity = NewIdentity();
  return options;
}

}  // namespace

OwnerThread::OwnerThread(std::string agent_name, EngineOptions options,
                         std::function<void()> wake_js)
    : agent_name_(std::move(agent_name)),
      options_(WithIdentity(std::move(options))),
      wake_js_(std::move(wake_js)) {
  if (options_.engine == "nixl") {
    engine_ = CreateNixlEngine(this, &engine_error_);
  } else {
    engine_ = CreateUcxEngine(this);
  }
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  thread_ = std::thread([this] { Run(); });
}

OwnerThread::~OwnerThread() {
  Join();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void OwnerThread::Join() {
  if (thread_.joinable()) thread_.join();
}

void OwnerThread::Submit(Command command) {
  commands_.Push(std::move(command));
  WakeIfSleeping();
}

void OwnerThread::SubmitAll(std::vector<Command>* commands) {
  if (commands->empty()) return;
  for (Command& command : *commands) commands_.Stage(std::move(command));
  commands_.Publish();
  WakeIfSleeping();
}

void OwnerThread::WakeIfSleeping() {
  // Only a sleeping thread needs the system call. The plain load first keeps
  // the flag's cache line shared while the owner thread is awake.
  if (sleeping_.load() && sleeping_.exchange(false)) {
    uint64_t one = 1;
    ssize_t n;
    do {
      n = write(wake_fd_, &one, sizeof one);
    } while (n < 0 && errno == EINTR);
  }
}

void OwnerThread::TakeEvents(std::vector<Event>* events, std::vector<Completion>* completions) {
  std::lock_guard<std::mutex> lock(events_mutex_);
  events->swap(events_);
  completions->swap(completions_);
  events_taken_.store(true, std::memory_order_relaxed);
}

void OwnerThread::Push(Event event) { Publish(&event); }

void OwnerThread::PublishCompletions() {
  if (!ready_.empty()) Publish(nullptr);
}

// Completions that happened before an event go out with it, so that JS
// never sees them after it (a close after the transfers it waited for).
void OwnerThread::Publish(Event* event) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(events_mutex_);
    was_empty = events_.empty() && completions_.empty();
    if (completions_.empty()) {
      completions_.swap(ready_);
    } else {
      completions_.insert(completions_.end(), ready_.begin(), ready_.end());
    }
    if (event != nullptr) events_.push_back(std::move(*event));
    events_taken_.store(false, std::memory_order_relaxed);
  }
  ready_.clear();
  if (was_empty) wake_js_();
}

bool OwnerThread::DrainCommands() {
  // A bounded batch: while JS posts a long burst, completions of its first
  // transfers go out (PublishCompletions after each pass) and JS works on
  // them meanwhile, instead of both threads taking turns at being idle.
  size_t executed = 0;
  Command command;
  // Nothing runs after cmd::Close: the engine is gone (JS sends nothing later).
  while (executed < kCommandsPerPass && state_ != EngineState::kStopped && commands_.Pop(&command)) {
    Execute(command);
    ++executed;
    // JS has taken everything and may be asleep: wake it once as much work
    // is done as is still queued. Waking it per transfer costs the owner
    // microseconds in the kernel each time (more on a VM); waking it later
    // leaves it too little time to repost before the queue runs dry.
    if (!ready_.empty() && ready_.size() >= commands_.Backlog() &&
        events_taken_.load(std::memory_order_relaxed)) {
      PublishCompletions();
    }
  }
  return executed > 0;
}

void OwnerThread::Execute(Command& command) {
  std::visit(Overloaded{[](std::monostate&) {}, [this](auto& c) { Execute(c); }}, command);
}

void OwnerThread::Execute(cmd::Start& c) {
  Status s = engine_ ? engine_->Start(agent_name_, options_) : engine_error_;
  ev::Started e{c.token, std::move(s), {}};
  if (e.status.ok()) {
    state_ = EngineState::kRunning;
    e.metadata = engine_->Metadata();
  }
  Push(std::move(e));
}

void OwnerThread::Execute(cmd::Register& c) {
  // What the engine cannot carry at all (VRAM on a UCX without CUDA) is
  // said before what is wrong with this one pointer.
  Status s = engine_->CanRegister(c.region->kind);
  if (s.ok() && c.check_memory_type) {
    s = cuda::CheckMemoryType(c.region->kind, c.region->address, c.region->length, c.region->device);
    // Memory a copy would fault on (unmapped, read-only, a device range)
    // crashes the worker at the first transfer otherwise.
    if (s.ok() && c.region->kind == MemKind::kDram) s = CheckHostMemory(c.region->address, c.region->length);
  }
  if (s.ok()) s = engine_->Register(c.region);
  ev::Registered e{c.token, std::move(s), c.region, {}};
  if (e.status.ok()) e.metadata = engine_->Metadata();
  Push(std::move(e));
}

void OwnerThread::Execute(cmd::Allocate& c) {
  ev::Registered e{c.token, engine_->Allocate(c.region), c.region, {}};
  if (e.status.ok()) e.metadata = engine_->Metadata();
  Push(std::move(e));
}

void OwnerThread::Execute(cmd::Deregister& c) {
  engine_->Deregister(c.region);
  Push(ev::Deregistered{c.token, c.region, engine_->Metadata()});
}

void OwnerThread::Execute(cmd::LoadPeer& c) {
  if (UpdateInPlace(c.token, c.blob, nullptr, 0) == Update::kDone) return;
  LoadAsNew(c.token, c.blob);
}

void OwnerThread::LoadAsNew(uint32_t token, const std::vector<uint8_t>& blob) {
  ev::PeerLoaded e{token, Status(), nullptr};
  e.status = ReplaceIncarnation(blob);
  if (!e.status.ok()) {
    Push(std::move(e));
    return;
  }
  e.status = engine_->LoadPeer(blob.data(), blob.size(), &e.peer);
  Peer* peer = e.peer.get();
  if (e.status.ok()) {
    NamedPeers& named = names_[peer->name];
    named.objects.push_back(peer);
    named.forgotten = false;
  }
  const Liveness::Watch watch = e.status.ok() ? liveness_.Add(peer, options_.identity) : Liveness::Watch::kUnwatchable;
  Push(std::move(e));
  // Metadata of an agent whose process has ended: loaded, and failed at
  // once (after the agent has adopted it, in the same batch).
  if (watch == Liveness::Watch::kGone) {
    engine_->FailPeer(peer, Status::Error(Code::kPeerUnreachable, "peer '" + peer->name + "' (pid " +
                                                                       std::to_string(peer->identity.pid) +
                                                                       ") is not running"));
  }
}

OwnerThread::Update OwnerThread::UpdateInPlace(uint32_t token, const std::vector<uint8_t>& blob,
                                               const std::string* sender, uint64_t sender_incarnation) {
  std::string name;
  ProcessIdentity identity;
  bool identity_known = false;
  const Update not_loaded = sender == nullptr ? Update::kLoadAsNew : Update::kIgnored;
  if (!engine_->Describe(blob.data(), blob.size(), &name, &identity, &identity_known).ok() || !identity_known) {
    return not_loaded;
  }
  // Pushed metadata may speak only for its sender, and only of a peer we
  // loaded: it never introduces one.
  if (sender != nullptr && (name != *sender || identity.incarnation != sender_incarnation)) return Update::kIgnored;
  auto it = names_.find(name);
  Peer* loaded = it == names_.end() ? nullptr : it->second.current();
  if (loaded == nullptr || !loaded->identity_known || loaded->identity.incarnation != identity.incarnation ||
      liveness_.Gone(loaded)) {
    return not_loaded;
  }
  ev::PeerUpdated e{token, loaded, {}};
  bool reload = false;
  Status s = engine_->UpdatePeer(loaded, blob.data(), blob.size(), &e.update, &reload);
  if (reload) return Update::kLoadAsNew;
  if (!s.ok()) {
    if (token != 0) Push(ev::PeerLoaded{token, std::move(s), nullptr});
    return Update::kDone;
  }
  Push(std::move(e));
  return Update::kDone;
}

// Applied outside the engine's progress: a push arrives inside one of its
// callbacks, where connecting and unpacking keys should not happen.
void OwnerThread::MetadataPushed(std::string peer, uint64_t incarnation, std::vector<uint8_t> blob) {
  pushed_.push_back(PushedMetadata{std::move(peer), incarnation, std::move(blob)});
}

bool OwnerThread::ApplyPushedMetadata() {
  if (pushed_.empty()) return false;
  std::vector<PushedMetadata> pushed = std::move(pushed_);
  pushed_.clear();
  for (PushedMetadata& p : pushed) {
    // Where the engine cannot merge it (NIXL, a region registered again
    // where one was), the peer is loaded anew, as by the application.
    if (UpdateInPlace(0, p.blob, &p.peer, p.incarnation) == Update::kLoadAsNew) LoadAsNew(0, p.blob);
  }
  return true;
}

void OwnerThread::Execute(cmd::DropRemoteRegions& c) {
  if (running()) engine_->DropRemoteRegions(c.peer, std::move(c.regions));
}

// Metadata of another incarnation under the name of a loaded peer: a
// restarted worker replaces the old one, whose work then fails at once
// rather than going to a process that is gone. Two incarnations that both
// still run (one host, so it can be seen) are two agents sharing a name:
// refused, since merging them would misdirect transfers and notifications.
Status OwnerThread::ReplaceIncarnation(const std::vector<uint8_t>& blob) {
  std::string name;
  ProcessIdentity identity;
  bool identity_known = false;
  // A blob that does not parse is refused by LoadPeer, with its reason.
  if (!engine_->Describe(blob.data(), blob.size(), &name, &identity, &identity_known).ok()) return Status::Ok();
  auto it = names_.find(name);
  Peer* loaded = it == names_.end() ? nullptr : it->second.current();
  if (loaded == nullptr || !identity_known) return Status::Ok();
  if (!loaded->identity_known || loaded->identity.incarnation == identity.incarnation) return Status::Ok();
  const bool loaded_runs = liveness_.Watching(loaded) && !liveness_.Gone(loaded);
  if (loaded_runs && identity.pid != loaded->identity.pid && options_.identity.SameProcessSpace(identity)) {
    return Status::Error(Code::kNameInUse,
                         "peer '" + name + "' is loaded from process " + std::to_string(loaded->identity.pid) +
                             ", which still runs; this metadata is of another agent with that name (process " +
                             std::to_string(identity.pid) + "). forgetPeer('" + name + "') first to switch to it");
  }
  // Every object of the old incarnation: older ones of it may still carry
  // work for prepared transfers.
  const uint64_t old_incarnation = loaded->identity.incarnation;
  for (Peer* old : it->second.objects) {
    if (!old->identity_known || old->identity.incarnation != old_incarnation) continue;
    liveness_.Remove(old);
    engine_->FailPeer(old, Status::Error(Code::kPeerUnreachable, "peer '" + name + "' (pid " +
                                                                     std::to_string(old->identity.pid) +
                                                                     ") was replaced by a new incarnation"));
  }
  return Status::Ok();
}

void OwnerThread::Execute(cmd::ForgetName& c) {
  auto it = names_.find(c.peer->name);
  if (it != names_.end() && it->second.current() == c.peer) it->second.forgotten = true;
  if (!running()) return;
  if (!c.failure.ok()) {
    liveness_.Remove(c.peer);
    engine_->FailPeer(c.peer, c.failure);
  }
  engine_->PeerForgotten(c.peer);
}

void OwnerThread::Execute(cmd::DestroyPeer& c) {
  ++in_flight_;  // until PeerDestroyed
  auto named = names_.find(c.peer->name);
  if (named != names_.end()) {
    std::vector<Peer*>& objects = named->second.objects;
    // The newest going means the name stands for no agent now, not for an
    // older object of it.
    if (!objects.empty() && objects.back() == c.peer) named->second.forgotten = true;
    objects.erase(std::remove(objects.begin(), objects.end(), c.peer), objects.end());
    if (objects.empty()) names_.erase(named);
  }
  liveness_.Remove(c.peer);
  stalls_.Forget(c.peer);
  engine_->DestroyPeer(c.peer);
}

void OwnerThread::CheckLiveness() {
  if (!running() || liveness_.empty()) return;
  dead_scratch_.clear();
  liveness_.Collect(&dead_scratch_);
  for (Peer* peer : dead_scratch_) FailExited(peer);
}

void OwnerThread::FailExited(Peer* peer) {
  engine_->FailPeer(peer, PeerExited(*peer));
}

void OwnerThread::CheckStalls() {
  constexpr uint64_t kStallCheckNs = 100000000;
  const uint64_t now = CoarseNowNs();
  if (now - stalls_checked_ns_ < kStallCheckNs) return;
  stalls_checked_ns_ = now;
  dead_scratch_.clear();
  stalls_.Collect(now, &dead_scratch_);
  for (Peer* peer : dead_scratch_) {
    const bool watched = liveness_.Watching(peer);
    if (watched && liveness_.Gone(peer)) {
      FailExited(peer);
      continue;
    }
    std::string why = "peer '" + peer->name + "' finished nothing for " +
                      std::to_string(stalls_.timeout_ns() / 1000000) + " ms with work in flight (peerTimeoutMs)";
    // Alive on this host and silent: a stuck path rather than a dead peer
    // (over shared memory, a receive queue stopped by a peer killed
    // mid-message: README, "Peers and failures").
    if (watched) why += "; its process still runs on this host";
    engine_->FailPeer(peer, Status::Error(Code::kPeerUnreachable, why));
  }
}

bool OwnerThread::ConfirmPeerFailure(Peer* peer) {
  if (!running() || !liveness_.Gone(peer)) return false;
  FailExited(peer);
  return true;
}

void OwnerThread::Execute(cmd::Post& c) {
  ++in_flight_;
  if (stalls_.enabled()) stalls_.Started(c.token, c.plan->peer, CoarseNowNs());
  engine_->Post(*c.plan, c.token);
}

void OwnerThread::Execute(cmd::Cancel& c) {
  if (running()) engine_->Cancel(c.target);
}

void OwnerThread::Execute(cmd::Estimate& c) {
  ev::Estimated e{c.token, Status(), CostEstimate()};
  e.status = engine_->Estimate(*c.plan, &e.estimate);
  Push(std::move(e));
}

void OwnerThread::Execute(cmd::ReleasePlan& c) {
  if (running()) engine_->ReleasePlan(*c.plan);
}

void OwnerThread::Execute(cmd::Notify& c) {
  ++in_flight_;
  if (stalls_.enabled()) stalls_.Started(c.token, c.peer, CoarseNowNs());
  engine_->Notify(c.peer, *c.message, c.token);
}

void OwnerThread::Execute(cmd::Close& c) {
  if (running()) engine_->Shutdown();
  engine_.reset();
  state_ = EngineState::kStopped;
  Push(ev::Closed{c.token});
}

void OwnerThread::OperationDone(uint32_t token, Status status, uint64_t duration_ns,
                                const Telemetry* telemetry) {
  --in_flight_;
  if (stalls_.enabled()) stalls_.Finished(token, CoarseNowNs());
  if (status.ok() && telemetry == nullptr) {
    ready_.push_back(Completion{token, duration_ns});
    return;
  }
  ev::OperationDone e{token, std::move(status), duration_ns, telemetry != nullptr, Telemetry()};
  if (telemetry != nullptr) e.telemetry = *telemetry;
  Push(std::move(e));
}

void OwnerThread::NotificationReceived(std::string peer, uint64_t incarnation, std::vector<uint8_t> message) {
  Push(ev::NotificationReceived{std::move(peer), incarnation, std::move(message)});
}

void OwnerThread::RegionsRevoked(std::string peer, uint64_t incarnation, std::vector<wire::RegionFields> regions) {
  Push(ev::RegionsRevoked{std::move(peer), incarnation, std::move(regions)});
}

void OwnerThread::PeerFailed(Peer* peer, Status status) { Push(ev::PeerFailed{peer, std::move(status)}); }

void OwnerThread::PeerDestroyed(Peer* peer) {
  --in_flight_;
  Push(ev::PeerDestroyed{peer});
}

void OwnerThread::SleepUntilWork(int timeout_ms) {
  // Announce the sleep first, then look for commands once more: a Submit that
  // raced with us either sees sleeping_ and writes the fd, or we see its
  // command here.
  sleeping_.store(true);
  if (!commands_.Empty()) {
    sleeping_.store(false);
    return;
  }
  std::vector<pollfd>& fds = poll_scratch_;
  fds.clear();
  fds.push_back({wake_fd_, POLLIN, 0});
  if (running() && engine_->event_fd() >= 0) fds.push_back({engine_->event_fd(), POLLIN, 0});
  const size_t first_pidfd = fds.size();
  liveness_.AppendPollFds(&fds);
  int n = poll(fds.data(), fds.size(), timeout_ms);
  sleeping_.store(false);
  if (n > 0 && (fds[0].revents & POLLIN)) {
    uint64_t value;
    while (read(wake_fd_, &value, sizeof value) > 0) {
    }
  }
  for (size_t i = first_pidfd; n > 0 && i < fds.size(); ++i) {
    if (fds[i].revents != 0) {
      CheckLiveness();
      break;
    }
  }
}

void OwnerThread::Run() {
  // The clock is read on idle passes only: a busy pass (most of them under
  // load) goes straight on to the next.
  bool idle_timing = false;
  std::chrono::steady_clock::time_point idle_since;
  unsigned passes = 0;
  while (state_ != EngineState::kStopped) {
    bool did_work = DrainCommands();
    if (state_ == EngineState::kStopped) break;
    if (running()) {
      while (engine_->Progress()) did_work = true;
      did_work |= ApplyPushedMetadata();
    }
    if (++passes % kPassesPerLivenessCheck == 0) CheckLiveness();
    if (in_flight_ > 0 && stalls_.enabled() && running()) CheckStalls();
    PublishCompletions();
    if (did_work) {
      idle_timing = false;
      continue;
    }
    // A breather between idle polls: a poll reads the lines the JS thread
    // writes commands to, and each read makes its next write a cache miss.
    for (int i = 0; i < kPausesPerIdlePass; ++i) CpuRelax();
    const auto now = std::chrono::steady_clock::now();
    if (!idle_timing) {
      idle_timing = true;
      idle_since = now;
    }
    if (in_flight_ > 0) {
      if (now - idle_since < kSpinBeforeNap) {
        if (now - idle_since >= kSpinBeforeYield) sched_yield();
        continue;
      }
      // Still idle after the nap: nap again, the spin is over.
      if (engine_->Arm()) SleepUntilWork(kNapMs);
      continue;
    }
    if (now - idle_since < kSpinBeforeSleep) continue;
    if (!running()) {
      SleepUntilWork(-1);
    } else if (engine_->Arm()) {
      SleepUntilWork(engine_->idle_poll_ms());
    }
  }
}

}  // namespace kvxfer
