#include "progress.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

namespace kvxfer {

namespace {

// While work is in flight the thread spins on progress; after this long with
// nothing happening it sleeps on the event fd in short naps, so a transfer
// stalled on a slow peer does not burn a core.
constexpr auto kSpinBeforeNap = std::chrono::microseconds(200);
constexpr int kNapMs = 1;
// With nothing in flight it keeps polling this long before it sleeps: a
// caller posting back to back then never pays for a wake-up (an eventfd
// write and a context switch, several microseconds each post).
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(50);
constexpr size_t kCommandsPerPass = 16;
constexpr int kPausesPerIdlePass = 8;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace

OwnerThread::OwnerThread(std::string agent_name, EngineOptions options,
                         std::function<void()> wake_js)
    : agent_name_(std::move(agent_name)),
      options_(std::move(options)),
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
  // Nothing runs after kClose: the engine is gone (JS sends nothing later).
  while (executed < kCommandsPerPass && !stopping_ && commands_.Pop(&command)) {
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

void OwnerThread::Execute(Command& c) {
  // Before a successful start (or after a failed one) the only commands that
  // can arrive are kStart and kClose: the JS side sends nothing else until
  // it has seen kStarted succeed.
  switch (c.type) {
    case Command::kStart: {
      Status s = engine_ ? engine_->Start(agent_name_, options_) : engine_error_;
      engine_started_ = s.ok();
      Event e{Event::kStarted, c.token, std::move(s)};
      if (engine_started_) e.data = engine_->Metadata();
      Push(std::move(e));
      break;
    }
    case Command::kRegister:
    case Command::kAllocate: {
      Status s = c.type == Command::kRegister ? engine_->Register(c.region)
                                              : engine_->Allocate(c.region);
      Event e{Event::kRegistered, c.token, std::move(s)};
      e.region = c.region;
      if (e.status.ok()) e.data = engine_->Metadata();
      Push(std::move(e));
      break;
    }
    case Command::kDeregister: {
      engine_->Deregister(c.region);
      Event e{Event::kDeregistered, c.token};
      e.region = c.region;
      e.data = engine_->Metadata();
      Push(std::move(e));
      break;
    }
    case Command::kLoadPeer: {
      std::unique_ptr<Peer> peer;
      Event e{Event::kPeerLoaded, c.token,
              engine_->LoadPeer(c.bytes.data(), c.bytes.size(), &peer)};
      e.peer = peer.release();
      Push(std::move(e));
      break;
    }
    case Command::kDestroyPeer:
      ++in_flight_;  // until PeerDestroyed
      engine_->DestroyPeer(c.peer);
      break;
    case Command::kPost:
      ++in_flight_;
      engine_->Post(*c.plan, c.token);
      break;
    case Command::kCancel:
      if (engine_started_) engine_->Cancel(c.target);
      break;
    case Command::kEstimate: {
      Event e{Event::kEstimated, c.token};
      e.status = engine_->Estimate(*c.plan, &e.estimate);
      Push(std::move(e));
      break;
    }
    case Command::kReleasePlan:
      if (engine_started_) engine_->ReleasePlan(*c.plan);
      delete c.plan;
      break;
    case Command::kNotify:
      ++in_flight_;
      engine_->Notify(c.peer, *c.message, c.token);
      break;
    case Command::kClose:
      if (engine_started_) engine_->Shutdown();
      engine_.reset();
      engine_started_ = false;
      stopping_ = true;
      Push(Event{Event::kClosed, c.token});
      break;
  }
}

void OwnerThread::OperationDone(uint32_t token, Status status, uint64_t duration_ns,
                                const Telemetry* telemetry) {
  --in_flight_;
  if (status.ok() && telemetry == nullptr) {
    ready_.push_back(Completion{token, duration_ns});
    return;
  }
  Event e{Event::kOperationDone, token, std::move(status)};
  e.duration_ns = duration_ns;
  if (telemetry != nullptr) {
    e.has_telemetry = true;
    e.telemetry = *telemetry;
  }
  Push(std::move(e));
}

void OwnerThread::NotificationReceived(std::string peer, std::vector<uint8_t> message) {
  Event e{Event::kNotification};
  e.peer_name = std::move(peer);
  e.data = std::move(message);
  Push(std::move(e));
}

void OwnerThread::PeerFailed(Peer* peer, Status status) {
  Event e{Event::kPeerFailed, 0, std::move(status)};
  e.peer = peer;
  Push(std::move(e));
}

void OwnerThread::PeerDestroyed(Peer* peer) {
  --in_flight_;
  Event e{Event::kPeerDestroyed};
  e.peer = peer;
  Push(std::move(e));
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
  pollfd fds[2];
  nfds_t count = 1;
  fds[0] = {wake_fd_, POLLIN, 0};
  if (engine_started_ && engine_->event_fd() >= 0) {
    fds[1] = {engine_->event_fd(), POLLIN, 0};
    count = 2;
  }
  int n = poll(fds, count, timeout_ms);
  sleeping_.store(false);
  if (n > 0 && (fds[0].revents & POLLIN)) {
    uint64_t value;
    while (read(wake_fd_, &value, sizeof value) > 0) {
    }
  }
}

void OwnerThread::Run() {
  // The clock is read on idle passes only: a busy pass (most of them under
  // load) goes straight on to the next.
  bool idle_timing = false;
  std::chrono::steady_clock::time_point idle_since;
  while (!stopping_) {
    bool did_work = DrainCommands();
    if (stopping_) break;
    if (engine_started_) {
      while (engine_->Progress()) did_work = true;
    }
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
      if (now - idle_since < kSpinBeforeNap) continue;
      // Still idle after the nap: nap again, the spin is over.
      if (engine_->Arm()) SleepUntilWork(kNapMs);
      continue;
    }
    if (now - idle_since < kSpinBeforeSleep) continue;
    if (!engine_started_) {
      SleepUntilWork(-1);
    } else if (engine_->Arm()) {
      SleepUntilWork(engine_->idle_poll_ms());
    }
  }
}

}  // namespace kvxfer
