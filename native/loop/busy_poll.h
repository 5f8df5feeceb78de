// The JS thread's poll for completions before its event loop sleeps.
//
// With operations pending, a completion found by polling needs no wake-up of
// a sleeping thread, which costs tens of microseconds on a VM (longer than a
// 1 MiB copy takes). So in the loop's prepare phase, when the loop is about
// to block, the JS thread looks for published events for up to the agent's
// budget (Agent.create({ busyPollUs })), never past the loop's next timer,
// yielding its core between looks. Where the cores are oversubscribed it
// stops: see BeforeLoopSleeps. JS thread only.
#pragma once

#include <uv.h>

#include <cstdint>

namespace kvxfer {

class OwnerThread;

namespace loop {

// One window per loop turn, shared by the agents of an environment: each
// polls in its own prepare callback, and without this their budgets would
// add up before the loop gets to timers and I/O.
struct BusyPollWindow {
  uint64_t deadline_ns = 0;
  uint64_t last_exit_ns = 0;
  // After a poll found the core taken by other threads: no polling before
  // this time, for a pause that doubles while it keeps finding them.
  uint64_t resume_ns = 0;
  uint64_t backoff_ns = 0;
};

// What the busy poll did, for stats(): tells whether busyPollUs pays.
struct BusyPollStats {
  double polls = 0;
  double found = 0;
  double ns = 0;
  // Polls cut short because other threads held the core.
  double contended = 0;
};

class BusyPoll {
 public:
  BusyPoll() = default;
  BusyPoll(BusyPollWindow* window, uint64_t budget_ns) : window_(window), budget_ns_(budget_ns) {}

  bool enabled() const { return window_ != nullptr && budget_ns_ > 0; }

  // The prepare callback, for an agent with operations pending.
  void BeforeLoopSleeps(uv_loop_t* loop, const OwnerThread& owner);

  // A batch was delivered: the poll phase of a turn has come, so the next
  // prepare callback opens a new window, however soon it runs.
  void BatchDelivered() {
    if (window_ != nullptr) window_->last_exit_ns = 0;
  }

  const BusyPollStats& stats() const { return stats_; }

 private:
  BusyPollWindow* window_ = nullptr;
  uint64_t budget_ns_ = 0;
  BusyPollStats stats_;
};

}  // namespace loop
}  // namespace kvxfer
