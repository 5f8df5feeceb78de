// libFuzzer target: BuildPlan (native/agent/plan_builder.h), which turns two
// descriptor lists, possibly a peer's, into a Plan, against fixed tables:
// three registered regions here (one VRAM) and two of the peer's. Input: a
// byte of flags (bit 0: READ; bit 1: a notification), a u16 local-list
// length, the local list, then the remote list. A plan it accepts must put
// every segment inside a registered region on both sides, pair local and
// remote lengths, and add up to its byte count.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "agent/plan_builder.h"
#include "builders.h"

namespace {

using kvxfer::MemKind;
using kvxfer::RemoteRegion;

struct Tables {
  testing::RecordingEvents events;
  kvxfer::AgentTables tables{&events};
  kvxfer::PeerEntry* peer = nullptr;
  Tables() {
    testing::AddRegistered(tables.regions(), 0x10000, 8192);
    testing::AddRegistered(tables.regions(), 0x40000, 8192);
    testing::AddRegistered(tables.regions(), 0x100000, 1 << 20, MemKind::kVram, 1);
    peer = tables.AdoptPeer(testing::MakePeer(
        "decode", {{0x900000, 1 << 20, MemKind::kDram, 0, nullptr}, {0xa00000, 65536, MemKind::kVram, 0, nullptr}}));
  }
};

bool Inside(uint64_t at, uint64_t length, uint64_t base, uint64_t size) {
  return at >= base && length <= size && at - base <= size - length;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Tables* fixed = new Tables();
  if (size < 3) return 0;
  uint16_t local_length;
  std::memcpy(&local_length, data + 1, 2);
  if (local_length > size - 3) return 0;
  kvxfer::PlanRequest request;
  request.op = (data[0] & 1) != 0 ? kvxfer::XferOp::kRead : kvxfer::XferOp::kWrite;
  if ((data[0] & 2) != 0) request.notify = {'n'};
  request.local = data + 3;
  request.local_length = local_length;
  request.remote = data + 3 + local_length;
  request.remote_length = size - 3 - local_length;
  kvxfer::XferEntry xfer;
  if (!kvxfer::BuildPlan(request, fixed->tables.regions(), *fixed->peer, &xfer).ok()) return 0;
  const kvxfer::Plan& plan = *xfer.plan;
  if (plan.segments.empty()) std::abort();
  uint64_t bytes = 0;
  for (const kvxfer::Segment& s : plan.segments) {
    if (s.length == 0 || s.local_region == nullptr || s.remote_region == nullptr) std::abort();
    if (!Inside(s.local, s.length, s.local_region->address, s.local_region->length)) std::abort();
    if (!Inside(s.remote, s.length, s.remote_region->address, s.remote_region->length)) std::abort();
    bytes += s.length;
  }
  if (bytes != plan.bytes) std::abort();
  return 0;
}
