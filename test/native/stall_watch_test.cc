// The stall watch: a peer with work in flight and nothing finished for the
// timeout is reported once, until its work moves again.
#include "liveness.h"

#include "builders.h"
#include "check.h"

using kvxfer::Peer;
using kvxfer::StallWatch;

namespace {
constexpr uint64_t kMs = 1000000;
}

TEST("stall watch: only a peer with work in flight and no completion for the timeout") {
  StallWatch watch(100 * kMs);
  auto busy = testing::MakePeer("busy");
  auto idle = testing::MakePeer("idle");
  std::vector<Peer*> stalled;
  watch.Started(1, busy.get(), 0);
  watch.Started(2, busy.get(), 50 * kMs);
  watch.Started(3, idle.get(), 0);
  watch.Finished(3, 10 * kMs);
  watch.Collect(99 * kMs, &stalled);
  CHECK(stalled.empty());
  // One completion moves the clock for the peer's other work too.
  watch.Finished(1, 90 * kMs);
  watch.Collect(150 * kMs, &stalled);
  CHECK(stalled.empty());
  watch.Collect(190 * kMs, &stalled);
  REQUIRE(stalled.size() == 1);
  CHECK(stalled[0] == busy.get());
  // Reported once.
  watch.Collect(400 * kMs, &stalled);
  CHECK_EQ(stalled.size(), size_t{1});
  // Work moving again re-arms it; a forgotten peer is never reported.
  watch.Started(4, busy.get(), 400 * kMs);
  watch.Finished(2, 410 * kMs);
  watch.Collect(600 * kMs, &stalled);
  CHECK_EQ(stalled.size(), size_t{2});
  watch.Forget(busy.get());
  watch.Finished(4, 700 * kMs);
  watch.Collect(900 * kMs, &stalled);
  CHECK_EQ(stalled.size(), size_t{2});
}
