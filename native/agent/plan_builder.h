// Turns a transfer request (two packed descriptor lists from JS, possibly
// from a peer) into a Plan the owner thread can post again and again with no
// per-descriptor work. Every check happens here, once. No V8 types: tested
// and fuzzed without Node (test/native/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "agent/tables.h"
#include "engine.h"
#include "status.h"

namespace kvxfer {

struct PlanRequest {
  XferOp op = XferOp::kWrite;
  const uint8_t* local = nullptr;  // packed descriptor lists (descs.h)
  size_t local_length = 0;
  const uint8_t* remote = nullptr;
  size_t remote_length = 0;
  std::vector<uint8_t> notify;  // empty: none; at most limits::kMaxNotificationBytes
  std::optional<MemKind> remote_kind;  // default: the local side's kind
};

// Checks the lists (well-formed, as many local as remote descriptors, equal
// lengths pairwise, at least one), every local descriptor against this
// agent's registered regions and, where the peer's regions are known, every
// remote one against the peer's. On success `out` holds the plan, the peer
// and each region it uses once; nothing is counted as held yet
// (AgentTables::AddXfer does that). On failure `out` is left unusable.
Status BuildPlan(const PlanRequest& request, RegionTable& regions, PeerEntry& peer, XferEntry* out);

}  // namespace kvxfer
