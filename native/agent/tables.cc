#include "agent/tables.h"

#include <algorithm>
#include <cstdio>

namespace kvxfer {

Status PeerEntry::Usable() const {
  switch (state) {
    case State::kLive:
      return Status::Ok();
    case State::kFailed:
      return failure;
    case State::kForgotten:
      break;
  }
  return Status::Error(Code::kUnknownPeer, "peer '" + name() + "' was forgotten or reloaded");
}

// PendingTable -------------------------------------------------------------

uint32_t PendingTable::Add(PendingOp op) {
  uint32_t token;
  if (!free_.empty()) {
    token = free_.back();
    free_.pop_back();
  } else {
    token = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  slots_[token].live = true;
  slots_[token].op = std::move(op);
  ++count_;
  return token;
}

bool PendingTable::Take(uint32_t token, PendingOp* out) {
  if (token >= slots_.size() || !slots_[token].live) return false;
  Slot& slot = slots_[token];
  *out = std::move(slot.op);
  slot.op = PendingOp();
  slot.live = false;
  free_.push_back(token);
  --count_;
  return true;
}

const PendingOp* PendingTable::Find(uint32_t token) const {
  if (token >= slots_.size() || !slots_[token].live) return nullptr;
  return &slots_[token].op;
}

void PendingTable::clear() {
  slots_.resize(1);
  free_.clear();
  count_ = 0;
}

// RegionTable --------------------------------------------------------------

RegionEntry* RegionTable::Add() {
  auto entry = std::make_unique<RegionEntry>();
  entry->id = next_id_++;
  RegionEntry* raw = entry.get();
  regions_.emplace(raw->id, std::move(entry));
  return raw;
}

RegionEntry* RegionTable::Find(uint32_t id) const {
  auto it = regions_.find(id);
  return it == regions_.end() ? nullptr : it->second.get();
}

Status RegionTable::FindRegistered(uint32_t id, RegionEntry** out) const {
  RegionEntry* entry = Find(id);
  if (entry == nullptr || entry->state != RegionEntry::State::kRegistered) {
    return Status::Error(Code::kNotRegistered, "the region is not registered");
  }
  *out = entry;
  return Status::Ok();
}

void RegionTable::MarkRegistered(RegionEntry* entry) {
  entry->state = RegionEntry::State::kRegistered;
  RebuildIndex();
}

Status RegionTable::BeginDeregister(uint32_t id, RegionEntry** out) {
  RegionEntry* entry = Find(id);
  if (entry == nullptr || entry->state == RegionEntry::State::kDeregistering) {
    return Status::Error(Code::kNotRegistered, "the region is not registered");
  }
  if (entry->state == RegionEntry::State::kRegistering) {
    return Status::Error(Code::kBusy, "the region is still being registered");
  }
  if (entry->users > 0) {
    return Status::Error(Code::kBusy, "the region is used by " + std::to_string(entry->users) +
                                          " unreleased transfer(s); release them (or let them finish) first");
  }
  entry->state = RegionEntry::State::kDeregistering;
  RebuildIndex();
  *out = entry;
  return Status::Ok();
}

void RegionTable::Erase(RegionEntry* entry) {
  const bool indexed = entry->state == RegionEntry::State::kRegistered;
  regions_.erase(entry->id);
  if (indexed) RebuildIndex();
}

void RegionTable::RebuildIndex() {
  index_.clear();
  // Files are reached as the far side of a transfer (NIXL names this agent
  // as the peer), never by local descriptors: their offsets are not addresses.
  for (auto& [id, entry] : regions_) {
    if (entry->state == RegionEntry::State::kRegistered && entry->region.kind != MemKind::kFile) {
      index_.push_back(entry.get());
    }
  }
  std::sort(index_.begin(), index_.end(), [](const RegionEntry* a, const RegionEntry* b) {
    return a->region.address < b->region.address;
  });
}

const RegionEntry* RegionTable::Containing(const Desc& d, bool* partial) const {
  const RegionEntry* const* hit = FindContaining(
      index_, d, [](const RegionEntry* e) -> const LocalRegion& { return e->region; }, partial);
  return hit == nullptr ? nullptr : *hit;
}

void RegionTable::clear() {
  index_.clear();
  regions_.clear();
}

// AgentTables --------------------------------------------------------------

Status AgentTables::FindPeer(const std::string& name, PeerEntry** out) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    auto departed = departed_.find(name);
    if (departed != departed_.end()) return departed->second;
    return Status::Error(Code::kUnknownPeer, "unknown peer '" + name + "': load its metadata with loadPeer() first");
  }
  *out = it->second;
  return Status::Ok();
}

PeerEntry* AgentTables::AdoptPeer(std::unique_ptr<Peer> peer, PeerChange* change) {
  auto entry = std::make_unique<PeerEntry>();
  entry->peer = std::move(peer);
  PeerEntry* raw = entry.get();
  auto old = by_name_.find(raw->name());
  if (change != nullptr) *change = PeerChange::kLoaded;
  if (old != by_name_.end()) {
    PeerEntry* previous = old->second;
    const Peer& was = *previous->peer;
    const Peer& is = *raw->peer;
    const bool restarted = was.identity_known && is.identity_known && was.identity.incarnation != is.identity.incarnation;
    if (change != nullptr) {
      *change = restarted || previous->state == PeerEntry::State::kFailed ? PeerChange::kReplaced : PeerChange::kUpdated;
    }
    by_name_.erase(old);
    // A failed peer stays failed: its transfers then say why (dead, replaced).
    if (previous->state == PeerEntry::State::kLive) previous->state = PeerEntry::State::kForgotten;
    ReleasePeer(previous);
  }
  ClearDeparted(raw->name());
  by_name_[raw->name()] = raw;
  peers_.emplace(raw->peer.get(), std::move(entry));
  return raw;
}

void AgentTables::ForgetPeer(PeerEntry* entry, Status failure) {
  by_name_.erase(entry->name());
  if (failure.ok()) {
    entry->state = PeerEntry::State::kForgotten;
  } else {
    entry->state = PeerEntry::State::kFailed;
    entry->failure = failure;
    if (departed_.size() >= kMaxDeparted) {
      departed_.erase(departed_order_.front());
      departed_order_.erase(departed_order_.begin());
    }
    if (departed_.insert_or_assign(entry->name(), std::move(failure)).second) departed_order_.push_back(entry->name());
  }
  ReleasePeer(entry);
}

bool AgentTables::ClearDeparted(const std::string& name) {
  if (departed_.erase(name) == 0) return false;
  departed_order_.erase(std::find(departed_order_.begin(), departed_order_.end(), name));
  return true;
}

PeerEntry* AgentTables::PeerFailed(Peer* peer, Status failure) {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return nullptr;
  PeerEntry* entry = it->second.get();
  if (entry->state == PeerEntry::State::kLive) entry->state = PeerEntry::State::kFailed;
  entry->failure = std::move(failure);
  return entry;
}

void AgentTables::PeerDestroyed(Peer* peer) { peers_.erase(peer); }

void AgentTables::ReleasePeer(PeerEntry* entry) {
  if (--entry->users == 0) events_->DestroyPeer(entry->peer.get());
}

XferEntry* AgentTables::AddXfer(std::unique_ptr<XferEntry> xfer) {
  for (RegionEntry* region : xfer->regions) ++region->users;
  for (RemoteRegion* region : xfer->remote_regions) ++region->users;
  HoldPeer(xfer->peer);
  xfer->id = next_xfer_id_++;
  if (xfer->id == 0) xfer->id = next_xfer_id_++;
  XferEntry* raw = xfer.get();
  xfers_.emplace(raw->id, std::move(xfer));
  return raw;
}

Status AgentTables::FindXfer(uint32_t id, XferEntry** out) const {
  auto it = xfers_.find(id);
  if (it == xfers_.end() || it->second->state == XferEntry::State::kReleasing) {
    return Status::Error(Code::kInvalidArg, "the transfer was released");
  }
  *out = it->second.get();
  return Status::Ok();
}

Status AgentTables::CheckPostable(const XferEntry& xfer) {
  if (xfer.state == XferEntry::State::kBusy) {
    return Status::Error(Code::kBusy, "the transfer is already in flight; wait for it or prepare another");
  }
  Status usable = xfer.peer->Usable();
  if (!usable.ok()) return usable;
  const Peer& peer = *xfer.peer->peer;
  // Revocations are rare: the segments are looked at again only after one.
  if (xfer.revocations_checked != peer.revocations) {
    for (const Segment& s : xfer.plan->segments) {
      if (s.remote_region != nullptr && s.remote_region->revoked) return RevokedRegion(peer.name, s.remote);
    }
    xfer.revocations_checked = peer.revocations;
  }
  return Status::Ok();
}

Status RevokedRegion(const std::string& peer, uint64_t address) {
  char hex[24];
  snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(address));
  return Status::Error(Code::kNotRegistered, std::string("remote address ") + hex + " is in a region peer '" + peer +
                                                 "' has deregistered");
}

bool AgentTables::Revoke(Peer& peer, const std::vector<wire::RegionFields>& regions) {
  bool any = false;
  for (const std::unique_ptr<RemoteRegion>& r : peer.regions) {
    for (const wire::RegionFields& gone : regions) {
      if (r->revoked || r->address != gone.address || r->length != gone.length || r->device != gone.device) continue;
      r->revoked = true;
      ++peer.revocations;
      any = true;
    }
  }
  return any;
}

void AgentTables::RevokeRegions(const std::string& name, uint64_t incarnation,
                                const std::vector<wire::RegionFields>& regions) {
  for (auto& [raw, entry] : peers_) {
    Peer& peer = *entry->peer;
    if (peer.name != name || !peer.identity_known || peer.identity.incarnation != incarnation) continue;
    if (Revoke(peer, regions)) PruneRevoked(entry.get());
  }
}

PeerEntry* AgentTables::MergeUpdate(Peer* peer, PeerUpdate update) {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return nullptr;
  PeerEntry* entry = it->second.get();
  // Dropped first: a region re-registered at the same place comes back as
  // a new one, and lookups prefer regions that are not revoked.
  if (Revoke(*peer, update.removed)) PruneRevoked(entry);
  for (std::unique_ptr<RemoteRegion>& region : update.added) peer->regions.Add(std::move(region));
  return entry;
}

void AgentTables::PruneRevoked(PeerEntry* entry) {
  if (entry->users == 0) return;  // being destroyed: the engine frees all
  Peer& peer = *entry->peer;
  std::vector<const RemoteRegion*> unused;
  for (const std::unique_ptr<RemoteRegion>& r : peer.regions) {
    if (r->revoked && r->users == 0) unused.push_back(r.get());
  }
  if (unused.empty()) return;
  std::vector<std::unique_ptr<RemoteRegion>> taken;
  taken.reserve(unused.size());
  for (const RemoteRegion* r : unused) taken.push_back(peer.regions.Take(r));
  events_->DropRemoteRegions(&peer, std::move(taken));
}

void AgentTables::FinishXfer(XferEntry* xfer) {
  if (xfer->state == XferEntry::State::kReleasing) {
    DestroyXfer(xfer);
  } else {
    xfer->state = XferEntry::State::kReady;
  }
}

void AgentTables::ReleaseXfer(uint32_t id) {
  auto it = xfers_.find(id);
  if (it == xfers_.end()) return;
  XferEntry* xfer = it->second.get();
  switch (xfer->state) {
    case XferEntry::State::kReady:
      DestroyXfer(xfer);
      break;
    case XferEntry::State::kBusy:
      xfer->state = XferEntry::State::kReleasing;
      break;
    case XferEntry::State::kReleasing:
      break;
  }
}

void AgentTables::DestroyXfer(XferEntry* xfer) {
  for (RegionEntry* region : xfer->regions) --region->users;
  bool prune = false;
  for (RemoteRegion* region : xfer->remote_regions) prune |= --region->users == 0 && region->revoked;
  // State the engine made for the plan (read here only after a completion
  // event, so after the owner thread wrote it) is freed where it was made.
  if (xfer->plan->engine_state != nullptr) events_->ReleasePlan(std::move(xfer->plan));
  PeerEntry* peer = xfer->peer;
  xfers_.erase(xfer->id);
  if (prune) PruneRevoked(peer);
  ReleasePeer(peer);
}

PendingOp AgentTables::Settle(uint32_t token) {
  PendingOp op;
  if (!pending_.Take(token, &op)) return op;
  if (auto* xfer = std::get_if<XferEntry*>(&op)) {
    FinishXfer(*xfer);
  } else if (auto* notify = std::get_if<PendingNotify>(&op)) {
    ReleasePeer(notify->peer);
  }
  return op;
}

void AgentTables::Clear() {
  pending_.clear();
  xfers_.clear();
  by_name_.clear();
  departed_.clear();
  departed_order_.clear();
  peers_.clear();
  regions_.clear();
}

}  // namespace kvxfer
