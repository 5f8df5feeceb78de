#include "loop/busy_poll.h"

#include <sched.h>

#include <algorithm>

#include "progress.h"

namespace kvxfer::loop {

namespace {
// The prepare callbacks of one loop turn run back to back: a longer gap
// means a new turn.
constexpr uint64_t kSameTurnGapNs = 10000;
// A yield that returns this late gave the core to another thread that was
// ready to run. Polling on would cost this thread its place: the kernel
// favours a thread woken from sleep (the loop's epoll, woken by the owner
// thread's event) over one that has kept running, so under load a polling
// JS thread waits out other processes' time slices with completions ready
// (1 MiB WRITEs beside two busy processes on two cores: 0.23-0.49 of
// ucx_perftest polling, 0.65-0.70 not).
constexpr uint64_t kContendedYieldNs = 50000;
// Then the loop sleeps without polling for this long, doubled at each poll
// that finds the core taken again: under steady load about one lost slice a
// second, and polling again within a second of the load's end.
constexpr uint64_t kFirstBackoffNs = 1000000;
constexpr uint64_t kMaxBackoffNs = 1000000000;
}  // namespace

void BusyPoll::BeforeLoopSleeps(uv_loop_t* loop, const OwnerThread& owner) {
  // Only when the loop is about to sleep: with timers due or handles
  // pending, polling here would only delay them.
  const int timeout_ms = uv_backend_timeout(loop);
  if (timeout_ms == 0) return;
  BusyPollWindow& window = *window_;
  const uint64_t now = uv_hrtime();
  if (now < window.resume_ns) return;
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
  bool contended = false;
  for (uint64_t look = now; !owner.HasEvents() && look < deadline;) {
    sched_yield();
    const uint64_t back = uv_hrtime();
    if (back - look > kContendedYieldNs) {
      contended = true;
      break;
    }
    look = back;
  }
  if (contended) {
    stats_.contended += 1;
    window.backoff_ns = std::clamp(window.backoff_ns * 2, kFirstBackoffNs, kMaxBackoffNs);
    window.resume_ns = uv_hrtime() + window.backoff_ns;
  } else {
    window.backoff_ns = 0;
  }
  const bool found = owner.HasEvents();
  // The loop has work now: agents after this one in the turn do not poll.
  if (found) window.deadline_ns = 0;
  window.last_exit_ns = uv_hrtime();
  stats_.polls += 1;
  stats_.found += found ? 1 : 0;
  stats_.ns += static_cast<double>(window.last_exit_ns - now);
}

}  // namespace kvxfer::loop
