// The reference counts that keep regions, peers and plans alive while
// transfers and notifications use them.
#include "agent/tables.h"

#include "builders.h"
#include "check.h"

using kvxfer::AgentTables;
using kvxfer::Code;
using kvxfer::PeerEntry;
using kvxfer::PendingOp;
using kvxfer::RegionEntry;
using kvxfer::Status;
using kvxfer::XferEntry;
using testing::AddRegistered;
using testing::MakePeer;
using testing::RecordingEvents;

namespace {

// A transfer over `regions` with `peer`, as BuildPlan leaves it.
std::unique_ptr<XferEntry> Xfer(PeerEntry* peer, std::vector<RegionEntry*> regions) {
  auto xfer = std::make_unique<XferEntry>();
  xfer->peer = peer;
  xfer->plan->peer = peer->peer.get();
  xfer->regions = std::move(regions);
  return xfer;
}

}  // namespace

TEST("region: registering, registered, deregistering, gone") {
  RecordingEvents events;
  AgentTables tables(&events);
  RegionEntry* entry = tables.regions().Add();
  const uint32_t id = entry->id;
  CHECK(entry->state == RegionEntry::State::kRegistering);
  RegionEntry* out = nullptr;
  CHECK_STATUS(tables.regions().BeginDeregister(id, &out), Code::kBusy, "still being registered");
  CHECK_STATUS(tables.regions().FindRegistered(id, &out), Code::kNotRegistered, "not registered");
  entry->region.address = 0x1000;
  entry->region.length = 4096;
  tables.regions().MarkRegistered(entry);
  CHECK(tables.regions().FindRegistered(id, &out).ok() && out == entry);
  CHECK(tables.regions().BeginDeregister(id, &out).ok());
  CHECK(entry->state == RegionEntry::State::kDeregistering);
  CHECK_STATUS(tables.regions().BeginDeregister(id, &out), Code::kNotRegistered, "not registered");
  // A deregistering region takes no new transfers.
  bool partial = false;
  CHECK(tables.regions().Containing(kvxfer::Desc{0x1000, 16, 0}, &partial) == nullptr);
  tables.regions().Erase(entry);
  CHECK(tables.regions().Find(id) == nullptr);
  CHECK_STATUS(tables.regions().BeginDeregister(id, &out), Code::kNotRegistered, "not registered");
  CHECK_STATUS(tables.regions().BeginDeregister(999, &out), Code::kNotRegistered, "not registered");
}

TEST("region: ids are never reused") {
  RecordingEvents events;
  AgentTables tables(&events);
  RegionEntry* a = tables.regions().Add();
  const uint32_t first = a->id;
  tables.regions().Erase(a);
  CHECK(tables.regions().Add()->id != first);
}

TEST("region: a transfer's region cannot be deregistered until the transfer is released") {
  RecordingEvents events;
  AgentTables tables(&events);
  RegionEntry* region = AddRegistered(tables.regions(), 0x10000, 1 << 20);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  const uint32_t id = tables.AddXfer(Xfer(peer, {region}))->id;
  CHECK_EQ(region->users, 1u);
  RegionEntry* out = nullptr;
  CHECK_STATUS(tables.regions().BeginDeregister(region->id, &out), Code::kBusy, "used by 1 unreleased transfer");
  tables.ReleaseXfer(id);
  CHECK_EQ(region->users, 0u);
  CHECK(tables.regions().BeginDeregister(region->id, &out).ok());
}

TEST("transfer: release while in flight is deferred to its completion") {
  RecordingEvents events;
  AgentTables tables(&events);
  RegionEntry* region = AddRegistered(tables.regions(), 0x10000, 4096);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  XferEntry* xfer = tables.AddXfer(Xfer(peer, {region}));
  const uint32_t id = xfer->id;
  CHECK(AgentTables::CheckPostable(*xfer).ok());
  tables.MarkBusy(xfer);
  const uint32_t token = tables.AddPending(xfer);
  CHECK_STATUS(AgentTables::CheckPostable(*xfer), Code::kBusy, "already in flight");
  tables.ReleaseXfer(id);
  XferEntry* found = nullptr;
  CHECK_STATUS(tables.FindXfer(id, &found), Code::kInvalidArg, "released");
  CHECK_EQ(region->users, 1u);  // the engine may still be reading it
  CHECK_EQ(tables.xfer_count(), size_t{1});
  tables.ReleaseXfer(id);  // twice: nothing more happens
  PendingOp op = tables.Settle(token);
  CHECK(std::holds_alternative<XferEntry*>(op));
  CHECK_EQ(tables.xfer_count(), size_t{0});
  CHECK_EQ(region->users, 0u);
  CHECK_EQ(peer->users, 1u);  // the name table's hold only
  CHECK(events.destroyed.empty());
}

TEST("transfer: a completed post leaves it ready to post again") {
  RecordingEvents events;
  AgentTables tables(&events);
  RegionEntry* region = AddRegistered(tables.regions(), 0x10000, 4096);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  XferEntry* xfer = tables.AddXfer(Xfer(peer, {region}));
  for (int round = 0; round < 3; ++round) {
    tables.MarkBusy(xfer);
    tables.Settle(tables.AddPending(xfer));
    CHECK(xfer->state == XferEntry::State::kReady);
    CHECK(AgentTables::CheckPostable(*xfer).ok());
  }
  CHECK(tables.pending().empty());
}

TEST("transfer: ids start at 1 and the released one is unknown") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  XferEntry* xfer = tables.AddXfer(Xfer(peer, {}));
  CHECK(xfer->id != 0);
  const uint32_t id = xfer->id;
  tables.ReleaseXfer(id);
  XferEntry* found = nullptr;
  CHECK_STATUS(tables.FindXfer(id, &found), Code::kInvalidArg, "released");
  CHECK_STATUS(tables.FindXfer(0, &found), Code::kInvalidArg, "released");
  tables.ReleaseXfer(12345);  // unknown ids are ignored
}

TEST("transfer: engine state of a destroyed plan goes back to the owner thread") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  XferEntry* with_state = tables.AddXfer(Xfer(peer, {}));
  int engine_state = 0;
  with_state->plan->engine_state = &engine_state;
  kvxfer::Plan* plan = with_state->plan.get();
  tables.ReleaseXfer(with_state->id);
  REQUIRE(events.released.size() == 1);
  CHECK(events.released[0].get() == plan);
  // Without engine state the plan is simply freed.
  tables.ReleaseXfer(tables.AddXfer(Xfer(peer, {}))->id);
  CHECK_EQ(events.released.size(), size_t{1});
}

TEST("peer: forgotten while a transfer uses it: disconnected when the transfer is released") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  kvxfer::Peer* raw = peer->peer.get();
  XferEntry* xfer = tables.AddXfer(Xfer(peer, {}));
  CHECK_EQ(peer->users, 2u);
  tables.ForgetPeer(peer);
  PeerEntry* found = nullptr;
  CHECK_STATUS(tables.FindPeer("decode", &found), Code::kUnknownPeer, "load its metadata");
  CHECK_STATUS(AgentTables::CheckPostable(*xfer), Code::kUnknownPeer, "forgotten or reloaded");
  CHECK(events.destroyed.empty());
  tables.ReleaseXfer(xfer->id);
  REQUIRE(events.destroyed.size() == 1);
  CHECK(events.destroyed[0] == raw);
  // The engine reports the connection down: the entry goes.
  tables.PeerDestroyed(raw);
  CHECK(tables.PeerFailed(raw, Status::Error(Code::kPeerUnreachable, "late")) == nullptr);
}

TEST("peer: forgotten because it left: its transfers and its name fail with the reason until it loads again") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  XferEntry* xfer = tables.AddXfer(Xfer(peer, {}));
  tables.ForgetPeer(peer, Status::Error(Code::kPeerUnreachable, "peer 'decode' left: lease expired"));
  CHECK_STATUS(AgentTables::CheckPostable(*xfer), Code::kPeerUnreachable, "lease expired");
  PeerEntry* found = nullptr;
  CHECK_STATUS(tables.FindPeer("decode", &found), Code::kPeerUnreachable, "lease expired");
  tables.ReleaseXfer(xfer->id);
  CHECK_EQ(events.destroyed.size(), size_t{1});
  // Loaded again: usable, and the departure is forgotten.
  PeerEntry* back = tables.AdoptPeer(MakePeer("decode"));
  CHECK(tables.FindPeer("decode", &found).ok() && found == back);
  CHECK(!tables.ClearDeparted("decode"));
  // Departures are bounded: the oldest go first.
  for (int i = 0; i < 1100; ++i) {
    tables.ForgetPeer(tables.AdoptPeer(MakePeer("w" + std::to_string(i))), Status::Error(Code::kPeerUnreachable, "left"));
  }
  CHECK_STATUS(tables.FindPeer("w0", &found), Code::kUnknownPeer, "load its metadata");
  CHECK_STATUS(tables.FindPeer("w1099", &found), Code::kPeerUnreachable, "left");
  CHECK(tables.ClearDeparted("w1099"));
  CHECK_STATUS(tables.FindPeer("w1099", &found), Code::kUnknownPeer, "load its metadata");
}

TEST("peer: newer metadata of the same name replaces the old; old transfers keep the old") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* old_peer = tables.AdoptPeer(MakePeer("decode"));
  XferEntry* old_xfer = tables.AddXfer(Xfer(old_peer, {}));
  PeerEntry* new_peer = tables.AdoptPeer(MakePeer("decode"));
  CHECK(new_peer != old_peer);
  PeerEntry* found = nullptr;
  CHECK(tables.FindPeer("decode", &found).ok() && found == new_peer);
  CHECK(old_peer->state == PeerEntry::State::kForgotten);
  CHECK_STATUS(AgentTables::CheckPostable(*old_xfer), Code::kUnknownPeer, "forgotten or reloaded");
  CHECK(events.destroyed.empty());
  tables.ReleaseXfer(old_xfer->id);
  REQUIRE(events.destroyed.size() == 1);
  CHECK(events.destroyed[0] == old_peer->peer.get());
  CHECK_EQ(tables.peer_count(), size_t{1});
}

TEST("peer: what a load did to the name: loaded, updated (same incarnation), replaced (another, or a failed one)") {
  RecordingEvents events;
  AgentTables tables(&events);
  auto incarnation = [](uint64_t id) {
    auto peer = MakePeer("decode");
    peer->identity.incarnation = id;
    peer->identity_known = true;
    return peer;
  };
  AgentTables::PeerChange change;
  tables.AdoptPeer(incarnation(1), &change);
  CHECK(change == AgentTables::PeerChange::kLoaded);
  tables.AdoptPeer(incarnation(1), &change);
  CHECK(change == AgentTables::PeerChange::kUpdated);
  PeerEntry* second = tables.AdoptPeer(incarnation(2), &change);
  CHECK(change == AgentTables::PeerChange::kReplaced);
  // The same incarnation loaded again after it failed is a replacement too, and the failed
  // entry keeps its failure for the transfers that still hold it.
  XferEntry* held = tables.AddXfer(Xfer(second, {}));
  tables.PeerFailed(second->peer.get(), Status::Error(Code::kPeerUnreachable, "exited"));
  tables.AdoptPeer(incarnation(2), &change);
  CHECK(change == AgentTables::PeerChange::kReplaced);
  CHECK(second->state == PeerEntry::State::kFailed);
  CHECK_STATUS(AgentTables::CheckPostable(*held), Code::kPeerUnreachable, "exited");
}

TEST("peer: a revoked region refuses new plans and prepared transfers, for that incarnation only") {
  RecordingEvents events;
  AgentTables tables(&events);
  auto peer = MakePeer("decode", {kvxfer::RemoteRegion{0x1000, 0x1000}, kvxfer::RemoteRegion{0x4000, 0x1000}});
  peer->identity.incarnation = 7;
  peer->identity_known = true;
  PeerEntry* entry = tables.AdoptPeer(std::move(peer));
  auto xfer = Xfer(entry, {});
  xfer->remote_regions.push_back(&entry->peer->regions[0]);
  xfer->plan->segments.push_back(kvxfer::Segment{0, 0x1800, 16, 0, nullptr, &entry->peer->regions[0]});
  XferEntry* held = tables.AddXfer(std::move(xfer));
  CHECK(AgentTables::CheckPostable(*held).ok());
  // Another incarnation's revocation, or one of a region not published, changes nothing.
  tables.RevokeRegions("decode", 8, {kvxfer::wire::RegionFields{0x1000, 0x1000, 0, 0}});
  tables.RevokeRegions("decode", 7, {kvxfer::wire::RegionFields{0x1000, 0x800, 0, 0}});
  CHECK(AgentTables::CheckPostable(*held).ok());
  tables.RevokeRegions("decode", 7, {kvxfer::wire::RegionFields{0x1000, 0x1000, 0, 0}});
  CHECK_STATUS(AgentTables::CheckPostable(*held), Code::kNotRegistered, "has deregistered");
  CHECK(!entry->peer->regions[1].revoked);
  CHECK_EQ(entry->peer->revocations, uint32_t{1});
}

TEST("peer: unused and replaced is disconnected at once") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* old_peer = tables.AdoptPeer(MakePeer("decode"));
  kvxfer::Peer* raw = old_peer->peer.get();
  tables.AdoptPeer(MakePeer("decode"));
  REQUIRE(events.destroyed.size() == 1);
  CHECK(events.destroyed[0] == raw);
}

TEST("peer: a failed peer refuses new work with its failure") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  XferEntry* xfer = tables.AddXfer(Xfer(peer, {}));
  PeerEntry* failed = tables.PeerFailed(peer->peer.get(),
                                        Status::Engine(Code::kPeerUnreachable, "peer 'decode' is unreachable",
                                                       "UCS_ERR_CONNECTION_RESET", -25));
  CHECK(failed == peer);
  CHECK_STATUS(peer->Usable(), Code::kPeerUnreachable, "unreachable");
  CHECK(peer->Usable().engine_status == "UCS_ERR_CONNECTION_RESET");
  CHECK_STATUS(AgentTables::CheckPostable(*xfer), Code::kPeerUnreachable, "unreachable");
  // Still known by name (stats, forgetPeer) until forgotten.
  PeerEntry* found = nullptr;
  CHECK(tables.FindPeer("decode", &found).ok());
  tables.ForgetPeer(peer);
  CHECK_STATUS(AgentTables::CheckPostable(*xfer), Code::kUnknownPeer, "forgotten");
}

TEST("peer: a standalone notification holds its peer until it completes") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  tables.HoldPeer(peer);
  const uint32_t token =
      tables.AddPending(kvxfer::PendingNotify{peer, std::make_unique<std::vector<uint8_t>>(3, 'x')});
  tables.ForgetPeer(peer);
  CHECK(events.destroyed.empty());
  PendingOp op = tables.Settle(token);
  CHECK(std::holds_alternative<kvxfer::PendingNotify>(op));
  CHECK_EQ(events.destroyed.size(), size_t{1});
}

TEST("pending: tokens are slot numbers, never 0, reused once settled") {
  kvxfer::PendingTable pending;
  const uint32_t a = pending.Add(PendingOp());
  const uint32_t b = pending.Add(PendingOp());
  CHECK(a != 0 && b != 0 && a != b);
  CHECK_EQ(pending.size(), size_t{2});
  PendingOp out;
  CHECK(pending.Take(a, &out));
  CHECK(!pending.Take(a, &out));
  CHECK(!pending.Take(0, &out));
  CHECK(!pending.Take(1000, &out));
  CHECK(pending.Find(a) == nullptr);
  CHECK(pending.Find(b) != nullptr);
  CHECK_EQ(pending.Add(PendingOp()), a);
  pending.clear();
  CHECK(pending.empty());
  CHECK(pending.Find(b) == nullptr);
}

TEST("clear: drops everything without asking the owner thread for anything") {
  RecordingEvents events;
  AgentTables tables(&events);
  RegionEntry* region = AddRegistered(tables.regions(), 0x10000, 4096);
  PeerEntry* peer = tables.AdoptPeer(MakePeer("decode"));
  XferEntry* xfer = tables.AddXfer(Xfer(peer, {region}));
  int engine_state = 0;
  xfer->plan->engine_state = &engine_state;
  tables.AddPending(xfer);
  tables.Clear();
  CHECK(events.destroyed.empty() && events.released.empty());
  CHECK_EQ(tables.xfer_count(), size_t{0});
  CHECK_EQ(tables.peer_count(), size_t{0});
  CHECK_EQ(tables.regions().size(), size_t{0});
  CHECK(tables.pending().empty());
}

namespace {

std::unique_ptr<kvxfer::RemoteRegion> NewRemote(uint64_t address, uint64_t length) {
  auto r = std::make_unique<kvxfer::RemoteRegion>();
  r->address = address;
  r->length = length;
  return r;
}

}  // namespace

TEST("peer update: merged in place; a prepared transfer keeps its region, a dropped one is revoked and pruned once unused") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* entry = tables.AdoptPeer(MakePeer("decode", {kvxfer::RemoteRegion{0x1000, 0x1000}}));
  kvxfer::RemoteRegion* first = &entry->peer->regions[0];
  auto xfer = Xfer(entry, {});
  xfer->remote_regions.push_back(first);
  xfer->plan->segments.push_back(kvxfer::Segment{0, 0x1000, 16, 0, nullptr, first});
  XferEntry* held = tables.AddXfer(std::move(xfer));
  CHECK_EQ(first->users, 1u);

  // New regions land around the old one, which stays where it was.
  kvxfer::PeerUpdate grow;
  grow.added.push_back(NewRemote(0x8000, 0x1000));
  grow.added.push_back(NewRemote(0x100, 0x100));
  CHECK(tables.MergeUpdate(entry->peer.get(), std::move(grow)) == entry);
  REQUIRE(entry->peer->regions.size() == 3);
  CHECK_EQ(entry->peer->regions[0].address, uint64_t{0x100});
  CHECK(&entry->peer->regions[1] == first);
  CHECK(AgentTables::CheckPostable(*held).ok());

  // The update drops the used region: revoked now, kept while the transfer holds it.
  kvxfer::PeerUpdate shrink;
  shrink.removed.push_back(kvxfer::wire::RegionFields{0x1000, 0x1000, 0, 0});
  shrink.removed.push_back(kvxfer::wire::RegionFields{0x100, 0x100, 0, 0});
  tables.MergeUpdate(entry->peer.get(), std::move(shrink));
  CHECK_STATUS(AgentTables::CheckPostable(*held), Code::kNotRegistered, "has deregistered");
  // The unused dropped region went to the engine at once; the used one waits.
  REQUIRE(events.dropped.size() == 1);
  CHECK_EQ(events.dropped[0]->address, uint64_t{0x100});
  CHECK_EQ(entry->peer->regions.size(), size_t{2});
  tables.ReleaseXfer(held->id);
  REQUIRE(events.dropped.size() == 2);
  CHECK(events.dropped[1].get() == first);
  CHECK_EQ(entry->peer->regions.size(), size_t{1});
  CHECK(events.destroyed.empty());
  // An update for a peer object no longer known is ignored.
  kvxfer::Peer stranger;
  CHECK(tables.MergeUpdate(&stranger, kvxfer::PeerUpdate{}) == nullptr);
}

TEST("peer update: a region registered again where a revoked one was is the one plans use") {
  RecordingEvents events;
  AgentTables tables(&events);
  PeerEntry* entry = tables.AdoptPeer(MakePeer("decode", {kvxfer::RemoteRegion{0x1000, 0x1000}}));
  auto xfer = Xfer(entry, {});
  xfer->remote_regions.push_back(&entry->peer->regions[0]);
  XferEntry* held = tables.AddXfer(std::move(xfer));
  kvxfer::PeerUpdate again;
  again.removed.push_back(kvxfer::wire::RegionFields{0x1000, 0x1000, 0, 0});
  again.added.push_back(NewRemote(0x1000, 0x1000));
  tables.MergeUpdate(entry->peer.get(), std::move(again));
  REQUIRE(entry->peer->regions.size() == 2);
  const kvxfer::RemoteRegion* fresh = nullptr;
  for (const auto& r : entry->peer->regions) {
    if (!r->revoked) fresh = r.get();
  }
  REQUIRE(fresh != nullptr);
  kvxfer::Desc d{0x1000, 64, 0};
  bool partial = false;
  auto get = [](const std::unique_ptr<kvxfer::RemoteRegion>& r) -> const kvxfer::RemoteRegion& { return *r; };
  const auto* hit = kvxfer::FindContainingIf(entry->peer->regions.items(), d, get,
                                             [](const kvxfer::RemoteRegion& r) { return r.revoked; }, &partial);
  REQUIRE(hit != nullptr);
  CHECK(hit->get() == fresh);
  tables.ReleaseXfer(held->id);
  CHECK_EQ(entry->peer->regions.size(), size_t{1});
}
