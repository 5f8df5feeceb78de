#include "loop/busy_poll.h"

#include <sched.h>

#include <algorithm>

#include "progress.h"

namespace kvxfer::loop {

namespace {
// The prepare callbacks of one loop turn run back to back: a longer gap
// means a new turn.
constexpr uint64_t kSameTurnGapNs = 10000;
}  // namespace

void BusyPoll::BeforeLoopSleeps(uv_loop_t* loop, const OwnerThread& owner) {
  // Only when the loop is about to sleep: with timers due or handles
  // pending, polling here would only delay them.
  const int timeout_ms = uv_backend_timeout(loop);
  if (timeout_ms == 0) return;
  BusyPollWindow& window = *window_;
  const uint64_t now = uv_hrtime();
  // After a gap (or after a batch was delivered) this is a new turn, and its
  // window opens.
  if (now - window.last_exit_ns > kSameTurnGapNs) {
    window.deadline_ns = now + budget_ns_;
    if (timeout_ms > 0) {
      // The timeout counts from the loop's time, taken at the start of the
      // turn: the next timer is due then, however long this turn has run.
      const uint64_t timer_due_ns = (uv_now(loop) + static_cast<uint64_t>(timeout_ms)) * 1000000;
      window.deadline_ns = std::min(window.deadline_ns, timer_due_ns);
    }
  }
  const uint64_t deadline = std::min(window.deadline_ns, now + budget_ns_);
  if (deadline <= now) {
    window.last_exit_ns = uv_hrtime();
    return;
  }
  // Yielding between looks hands the core over to any thread that is ready
  // to run (the owner thread itself, where cores are fewer than threads).
  while (!owner.HasEvents() && uv_hrtime() < deadline) sched_yield();
  const bool found = owner.HasEvents();
  // The loop has work now: agents after this one in the turn do not poll.
  if (found) window.deadline_ns = 0;
  window.last_exit_ns = uv_hrtime();
  stats_.polls += 1;
  stats_.found += found ? 1 : 0;
  stats_.ns += static_cast<double>(window.last_exit_ns - now);
}

}  // namespace kvxfer::loop
