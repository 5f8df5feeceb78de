// The JS side's view of an agent: its regions, peers, prepared transfers and
// pending operations, and the reference counts that tie them together. No V8
// types, so they are tested without Node (test/native/). JS thread only.
//
// Who holds what:
//  - a prepared transfer holds its peer and every region it touches until it
//    is released (deferred while it is in flight): a used region cannot be
//    deregistered, a used peer is not disconnected;
//  - a pending standalone notification holds its peer until it completes;
//  - the peer table holds each live peer once, until it is forgotten or
//    replaced by newer metadata of the same name.
// What has to happen on the owner thread when the last holder lets go (a
// connection to tear down, engine state of a plan to free) goes to a
// TableEvents.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "descs.h"
#include "engine.h"
#include "shared_pages.h"
#include "status.h"

namespace kvxfer {

// The region holding [d.address, d.address + d.length) among regions sorted by
// start address (LocalRegion or RemoteRegion, reached through `get`). Regions
// may overlap, so a miss keeps looking at earlier ones; the common hit costs
// one binary search. `partial` is set when a region holds the start but not
// the end. A VRAM region matches only descriptors of its device;
// FindContainingIf also passes over regions `skip` rejects.
template <typename T, typename Get, typename Skip>
const T* FindContainingIf(const std::vector<T>& sorted, const Desc& d, Get get, Skip skip, bool* partial) {
  auto it = std::upper_bound(sorted.begin(), sorted.end(), d.address,
                             [&](uint64_t a, const T& r) { return a < get(r).address; });
  while (it != sorted.begin()) {
    --it;
    const auto& r = get(*it);
    const uint64_t offset = d.address - r.address;
    if (offset >= r.length) continue;
    if (r.kind == MemKind::kVram && r.device != d.device) continue;
    if (skip(r)) continue;
    if (d.length <= r.length - offset) return &*it;
    *partial = true;
  }
  return nullptr;
}

template <typename T, typename Get>
const T* FindContaining(const std::vector<T>& sorted, const Desc& d, Get get, bool* partial) {
  return FindContainingIf(sorted, d, get, [](const auto&) { return false; }, partial);
}

// Keeps the JS memory a region covers alive (a reference to the JS buffer).
// Made and released on the JS thread (agent.cc); opaque here.
class Pin {
 public:
  virtual ~Pin() = default;
};

struct RegionEntry {
  enum class State : uint8_t { kRegistering, kRegistered, kDeregistering };
  uint32_t id = 0;
  State state = State::kRegistering;
  LocalRegion region;
  std::unique_ptr<Pin> pin;
  // Host memory: its record among this process's registrations (and its
  // shared pages, if moved). Goes with the entry, after the engine let go.
  std::unique_ptr<HostRegistration> host;
  uint32_t users = 0;  // unreleased transfers using it
  // The plan builder's scratch: the last plan that counted this region.
  uint64_t plan_mark = 0;
};

struct PeerEntry {
  // kFailed: the engine reported the peer dead; kForgotten: forgotten, or
  // replaced by newer metadata of the same name (kept only while transfers
  // prepared against it are).
  enum class State : uint8_t { kLive, kFailed, kForgotten };
  std::unique_ptr<Peer> peer;
  uint32_t users = 1;  // holders; the connection goes when this reaches 0
  State state = State::kLive;
  Status failure;  // kFailed: why

  // Ok, or why no new work may use the peer.
  Status Usable() const;
  const std::string& name() const { return peer->name; }
};

struct XferEntry {
  // kBusy: posted (or being estimated) and not yet completed; kReleasing:
  // released while busy, destroyed when the operation completes.
  enum class State : uint8_t { kReady, kBusy, kReleasing };
  uint32_t id = 0;
  State state = State::kReady;
  std::unique_ptr<Plan> plan = std::make_unique<Plan>();
  PeerEntry* peer = nullptr;
  std::vector<RegionEntry*> regions;  // each once
  std::vector<RemoteRegion*> remote_regions;  // each once
  // The peer's revocation count its segments were last checked against.
  mutable uint32_t revocations_checked = 0;
};

// A standalone notification owns its message until the engine is done.
struct PendingNotify {
  PeerEntry* peer;
  std::unique_ptr<std::vector<uint8_t>> message;
};

// What a token's completion settles on this side.
using PendingOp = std::variant<std::monostate, XferEntry*, RegionEntry*, PendingNotify>;

// Why a descriptor into a revoked region of `peer` is refused.
Status RevokedRegion(const std::string& peer, uint64_t address);

class TableEvents {
 public:
  virtual ~TableEvents() = default;
  // The last holder of a peer let go.
  virtual void DestroyPeer(Peer* peer) = 0;
  // A destroyed transfer's plan holds engine state (plan->engine_state).
  virtual void ReleasePlan(std::unique_ptr<Plan> plan) = 0;
  // Revoked regions of a live peer that no transfer uses: taken out of its
  // list, for the engine to free (Engine::DropRemoteRegions).
  virtual void DropRemoteRegions(Peer* peer, std::vector<std::unique_ptr<RemoteRegion>> regions) = 0;
};

// Operations waiting for completion, by token. A token is a slot number,
// reused once its completion has been delivered: JS forgets a token in the
// very call that delivers it, so a reused token never meets a stale one, and
// the per-transfer lookups index a vector instead of hashing and allocating.
class PendingTable {
 public:
  PendingTable() { slots_.emplace_back(); }
  uint32_t Add(PendingOp op);
  // Moves the operation out and frees its token; false if it is not pending.
  bool Take(uint32_t token, PendingOp* out);
  const PendingOp* Find(uint32_t token) const;
  bool empty() const { return count_ == 0; }
  size_t size() const { return count_; }
  void clear();

 private:
  struct Slot {
    bool live = false;
    PendingOp op;
  };
  std::vector<Slot> slots_;  // slot 0 is never a token
  std::vector<uint32_t> free_;
  size_t count_ = 0;
};

class RegionTable {
 public:
  // A new region, kRegistering, with a fresh id.
  RegionEntry* Add();
  RegionEntry* Find(uint32_t id) const;
  // The region `id` if it is registered, else why not.
  Status FindRegistered(uint32_t id, RegionEntry** out) const;
  void MarkRegistered(RegionEntry* entry);
  // Checks that `id` may be deregistered now and marks it kDeregistering.
  Status BeginDeregister(uint32_t id, RegionEntry** out);
  void Erase(RegionEntry* entry);

  // The registered region holding all of `d`, searching regions sorted by
  // start address; `partial` is set when one holds its start but not its end.
  const RegionEntry* Containing(const Desc& d, bool* partial) const;
  // A mark no region (local or remote) carries yet, for counting each
  // region once per plan. 64 bits: it never wraps.
  uint64_t NewPlanMark() { return ++plan_mark_; }

  size_t size() const { return regions_.size(); }
  void clear();

 private:
  void RebuildIndex();

  uint32_t next_id_ = 1;
  uint64_t plan_mark_ = 0;
  std::unordered_map<uint32_t, std::unique_ptr<RegionEntry>> regions_;
  std::vector<RegionEntry*> index_;  // registered regions by address
};

// Everything below, with the reference counts kept right across tables.
class AgentTables {
 public:
  explicit AgentTables(TableEvents* events) : events_(events) {}
  AgentTables(const AgentTables&) = delete;
  AgentTables& operator=(const AgentTables&) = delete;

  RegionTable& regions() { return regions_; }
  PendingTable& pending() { return pending_; }

  // Peers ------------------------------------------------------------------
  // The live peer of that name, or ERR_UNKNOWN_PEER.
  Status FindPeer(const std::string& name, PeerEntry** out) const;
  // What loading a peer did to the name: kLoaded, it was not loaded;
  // kUpdated, newer metadata of the same incarnation (new regions);
  // kReplaced, another incarnation (a restart) or the loaded one had failed.
  enum class PeerChange : uint8_t { kLoaded, kUpdated, kReplaced };
  // A peer the engine loaded. Newer metadata replaces older of the same name:
  // transfers prepared against the old one keep it until they are released.
  PeerEntry* AdoptPeer(std::unique_ptr<Peer> peer, PeerChange* change = nullptr);
  // With a failure (the peer left), transfers still holding the entry, and
  // new ones naming the peer until it is loaded again, fail with it.
  void ForgetPeer(PeerEntry* entry, Status failure = Status::Ok());
  // Forgets why `name` left, if it did: true when it had (it is not loaded).
  bool ClearDeparted(const std::string& name);
  // The engine found the peer dead; null when it is no longer known.
  PeerEntry* PeerFailed(Peer* peer, Status failure);
  // Whether `entry` is the one its name leads to (not forgotten, not
  // superseded by newer metadata).
  bool IsCurrent(const PeerEntry* entry) const {
    auto it = by_name_.find(entry->name());
    return it != by_name_.end() && it->second == entry;
  }
  // The engine tore the connection down.
  void PeerDestroyed(Peer* peer);
  // Peer `name`, incarnation `incarnation`, deregistered these regions: its
  // loaded entries (old ones that transfers still hold too) refuse
  // descriptors into them from now on.
  void RevokeRegions(const std::string& name, uint64_t incarnation, const std::vector<wire::RegionFields>& regions);
  // Newer metadata of the same incarnation, merged into the peer's entry in
  // place (Engine::UpdatePeer): prepared transfers stay valid. The update's
  // regions join the list; those it dropped are revoked. Null when the
  // peer object is no longer known (its update is freed with it).
  PeerEntry* MergeUpdate(Peer* peer, PeerUpdate update);
  void HoldPeer(PeerEntry* entry) { ++entry->users; }
  void ReleasePeer(PeerEntry* entry);

  // Transfers --------------------------------------------------------------
  // Takes a built transfer: it holds its peer and regions from now on.
  XferEntry* AddXfer(std::unique_ptr<XferEntry> xfer);
  // The unreleased transfer `id`, or ERR_INVALID_ARG.
  Status FindXfer(uint32_t id, XferEntry** out) const;
  // Whether `xfer` may be posted now (not in flight, its peer usable, none
  // of its remote regions revoked).
  static Status CheckPostable(const XferEntry& xfer);
  // The transfer is handed to the owner thread until FinishXfer.
  void MarkBusy(XferEntry* xfer) { xfer->state = XferEntry::State::kBusy; }
  void FinishXfer(XferEntry* xfer);
  // Destroys the transfer now, or when its operation completes.
  void ReleaseXfer(uint32_t id);

  // Operations -------------------------------------------------------------
  uint32_t AddPending(PendingOp op) { return pending_.Add(std::move(op)); }
  // Takes the token's operation out and lets go of what a transfer or
  // notification held; the region of a registration is left to the caller.
  PendingOp Settle(uint32_t token);

  size_t peer_count() const { return by_name_.size(); }
  size_t xfer_count() const { return xfers_.size(); }
  // Drops everything without telling anyone: the engine is gone.
  void Clear();

 private:
  void DestroyXfer(XferEntry* xfer);
  // Marks the matching regions of `peer` revoked; true when one was.
  static bool Revoke(Peer& peer, const std::vector<wire::RegionFields>& regions);
  // Hands revoked regions no transfer uses to the engine, unless the whole
  // peer is going anyway.
  void PruneRevoked(PeerEntry* entry);

  TableEvents* const events_;
  RegionTable regions_;
  PendingTable pending_;
  std::unordered_map<Peer*, std::unique_ptr<PeerEntry>> peers_;
  std::unordered_map<std::string, PeerEntry*> by_name_;
  // Why peers that left are gone, by name, until the name loads again; the
  // oldest go first beyond kMaxDeparted.
  static constexpr size_t kMaxDeparted = 1024;
  std::unordered_map<std::string, Status> departed_;
  std::vector<std::string> departed_order_;
  std::unordered_map<uint32_t, std::unique_ptr<XferEntry>> xfers_;
  uint32_t next_xfer_id_ = 1;
};

}  // namespace kvxfer
