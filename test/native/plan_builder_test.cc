// Every check prepare() makes, on lists that may come from a peer.
#include "agent/plan_builder.h"

#include <random>

#include "builders.h"
#include "check.h"

using kvxfer::AgentTables;
using kvxfer::BuildPlan;
using kvxfer::Code;
using kvxfer::Desc;
using kvxfer::MemKind;
using kvxfer::PeerEntry;
using kvxfer::PlanRequest;
using kvxfer::RegionEntry;
using kvxfer::RemoteRegion;
using kvxfer::Status;
using kvxfer::XferEntry;
using testing::AddRegistered;
using testing::MakePeer;
using testing::Pack;
using testing::RecordingEvents;

namespace {

struct Fixture {
  RecordingEvents events;
  AgentTables tables{&events};
  PeerEntry* peer = nullptr;
  std::vector<uint8_t> local_bytes, remote_bytes;

  explicit Fixture(std::vector<RemoteRegion> remote = {{0x900000, 1 << 20, MemKind::kDram, 0, nullptr}}) {
    peer = tables.AdoptPeer(MakePeer("decode", std::move(remote)));
  }

  Status Build(const std::vector<Desc>& local, const std::vector<Desc>& remote, XferEntry* out,
               PlanRequest request = PlanRequest()) {
    local_bytes = Pack(local);
    remote_bytes = Pack(remote);
    request.local = local_bytes.data();
    request.local_length = local_bytes.size();
    request.remote = remote_bytes.data();
    request.remote_length = remote_bytes.size();
    return BuildPlan(request, tables.regions(), *peer, out);
  }

  Status Build(const std::vector<Desc>& local, const std::vector<Desc>& remote) {
    XferEntry xfer;
    return Build(local, remote, &xfer);
  }
};

}  // namespace

TEST("plan: segments, bytes, and each region once") {
  Fixture f;
  RegionEntry* a = AddRegistered(f.tables.regions(), 0x10000, 8192);
  RegionEntry* b = AddRegistered(f.tables.regions(), 0x40000, 8192);
  XferEntry xfer;
  PlanRequest request;
  request.op = kvxfer::XferOp::kRead;
  request.notify = {'r', 'e', 'q'};
  Status s = f.Build({{0x10000, 4096, 0}, {0x41000, 4096, 0}, {0x11000, 4096, 0}},
                     {{0x900000, 4096, 0}, {0x901000, 4096, 0}, {0x902000, 4096, 0}}, &xfer, request);
  REQUIRE(s.ok());
  const kvxfer::Plan& plan = *xfer.plan;
  CHECK(plan.op == kvxfer::XferOp::kRead);
  CHECK(plan.peer == f.peer->peer.get());
  CHECK(xfer.peer == f.peer);
  CHECK_EQ(plan.bytes, uint64_t{12288});
  REQUIRE(plan.segments.size() == 3);
  CHECK_EQ(plan.segments[1].local, uint64_t{0x41000});
  CHECK_EQ(plan.segments[1].remote, uint64_t{0x901000});
  CHECK(plan.segments[1].local_region == &b->region);
  CHECK(plan.segments[2].local_region == &a->region);
  CHECK(plan.segments[0].remote_region == &f.peer->peer->regions[0]);
  CHECK(xfer.remote_regions.size() == 1 && xfer.remote_regions[0] == &f.peer->peer->regions[0]);
  REQUIRE(xfer.regions.size() == 2);
  CHECK(xfer.regions[0] == a && xfer.regions[1] == b);
  CHECK(plan.notify == request.notify);
  CHECK(plan.remote_kind == MemKind::kDram);
  // Building counts nothing as held: AddXfer does.
  CHECK_EQ(a->users, 0u);
}

TEST("plan: list shapes") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0x10000, 8192);
  CHECK_STATUS(f.Build({{0x10000, 16, 0}}, {{0x900000, 16, 0}, {0x900010, 16, 0}}), Code::kInvalidArg,
               "the local list has 1 descriptors and the remote list 2");
  CHECK_STATUS(f.Build({}, {}), Code::kInvalidArg, "at least one descriptor");
  CHECK_STATUS(f.Build({{0x10000, 16, 0}}, {{0x900000, 32, 0}}), Code::kInvalidArg,
               "descriptor 0: local length 16 differs from remote length 32");
}

TEST("plan: malformed lists are refused, never read past their end") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0x10000, 8192);
  const std::vector<uint8_t> good = Pack({{0x10000, 16, 0}});
  auto refuse = [&](std::vector<uint8_t> local, const char* text) {
    const std::vector<uint8_t> remote = Pack({{0x900000, 16, 0}});
    PlanRequest request;
    request.local = local.data();
    request.local_length = local.size();
    request.remote = remote.data();
    request.remote_length = remote.size();
    XferEntry xfer;
    const Status s = BuildPlan(request, f.tables.regions(), *f.peer, &xfer);
    CHECK_STATUS(s, Code::kInvalidArg, text);
    CHECK(s.message.rfind("local list: ", 0) == 0);
  };
  refuse(std::vector<uint8_t>(good.begin(), good.begin() + 15), "shorter than its header");
  refuse(std::vector<uint8_t>(good.begin(), good.end() - 1), "size does not match");
  std::vector<uint8_t> bad_magic = good;
  bad_magic[0] ^= 1;
  refuse(bad_magic, "bad magic");
  std::vector<uint8_t> bad_version = good;
  bad_version[4] = 2;
  refuse(bad_version, "version 2");
  std::vector<uint8_t> huge_count = good;
  huge_count[11] = 0x20;  // 2^29 descriptors
  refuse(huge_count, "too many descriptors");
  refuse(Pack({{0x10000, 0, 0}}), "descriptor 0 has length 0");
  refuse(Pack({{~uint64_t{0}, 2, 0}}), "wraps around");
  PlanRequest no_lists;
  XferEntry xfer;
  CHECK_STATUS(BuildPlan(no_lists, f.tables.regions(), *f.peer, &xfer), Code::kInvalidArg, "local list:");
}

TEST("plan: local descriptors outside, or running past, a registered region") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0x10000, 4096);
  CHECK_STATUS(f.Build({{0x20000, 16, 0}}, {{0x900000, 16, 0}}), Code::kNotRegistered,
               "local descriptor 0 (0x20000, 16 bytes) is not in a registered region");
  CHECK_STATUS(f.Build({{0x10ff0, 32, 0}}, {{0x900000, 32, 0}}), Code::kOutOfRange, "runs past the end of its region");
  CHECK_STATUS(f.Build({{0xfff0, 32, 0}}, {{0x900000, 32, 0}}), Code::kNotRegistered, "not in a registered region");
  CHECK(f.Build({{0x10ff0, 16, 0}}, {{0x900000, 16, 0}}).ok());
}

TEST("plan: remote descriptors against the peer's regions") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0x10000, 1 << 20);
  CHECK_STATUS(f.Build({{0x10000, 16, 0}}, {{0x800000, 16, 0}}), Code::kNotRegistered,
               "remote descriptor 0 (0x800000, 16 bytes) is in no registered region of peer 'decode'");
  CHECK_STATUS(f.Build({{0x10000, 32, 0}}, {{0x9ffff0, 32, 0}}), Code::kOutOfRange,
               "runs past the end of a region of peer 'decode'");
}

TEST("plan: a peer whose regions are opaque (NIXL) is checked by its engine, not here") {
  Fixture f(std::vector<RemoteRegion>{});
  f.peer->peer->regions_known = false;
  AddRegistered(f.tables.regions(), 0x10000, 4096);
  XferEntry xfer;
  REQUIRE(f.Build({{0x10000, 16, 0}}, {{0x123, 16, 7}}, &xfer).ok());
  CHECK(xfer.plan->segments[0].remote_region == nullptr);
  CHECK_EQ(xfer.plan->segments[0].remote_device, 7u);
}

TEST("plan: VRAM regions match only descriptors of their device") {
  Fixture f({{0x900000, 1 << 20, MemKind::kVram, 1, nullptr}});
  AddRegistered(f.tables.regions(), 0x10000, 4096, MemKind::kVram, 2);
  CHECK_STATUS(f.Build({{0x10000, 16, 0}}, {{0x900000, 16, 1}}), Code::kNotRegistered, "local descriptor 0");
  CHECK_STATUS(f.Build({{0x10000, 16, 2}}, {{0x900000, 16, 0}}), Code::kNotRegistered, "remote descriptor 0");
  XferEntry xfer;
  REQUIRE(f.Build({{0x10000, 16, 2}}, {{0x900000, 16, 1}}, &xfer).ok());
  CHECK(xfer.plan->remote_kind == MemKind::kVram);
}

TEST("plan: file regions are never local memory") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0, 1 << 20, MemKind::kFile, 5);
  CHECK_STATUS(f.Build({{0x100, 16, 5}}, {{0x900000, 16, 0}}), Code::kNotRegistered, "local descriptor 0");
}

TEST("plan: remote kind defaults to the local kind") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0x10000, 4096);
  XferEntry xfer;
  PlanRequest request;
  request.remote_kind = MemKind::kFile;
  REQUIRE(f.Build({{0x10000, 16, 0}}, {{0x900000, 16, 0}}, &xfer, request).ok());
  CHECK(xfer.plan->remote_kind == MemKind::kFile);
}

TEST("plan: a notification over the limit is refused") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0x10000, 4096);
  XferEntry xfer;
  PlanRequest request;
  request.notify.assign(kvxfer::limits::kMaxNotificationBytes + 1, 'x');
  CHECK_STATUS(f.Build({{0x10000, 16, 0}}, {{0x900000, 16, 0}}, &xfer, request), Code::kInvalidArg, "at most 16 KiB");
  request.notify.pop_back();
  CHECK(f.Build({{0x10000, 16, 0}}, {{0x900000, 16, 0}}, &xfer, request).ok());
}

TEST("plan: one block named many times, and a total past 2^64") {
  Fixture f({{0x1000, ~uint64_t{0} - 0x1000, MemKind::kDram, 0, nullptr}});
  AddRegistered(f.tables.regions(), 0x1000, ~uint64_t{0} - 0x1000);
  const uint64_t half = uint64_t{1} << 63;
  CHECK_STATUS(f.Build({{0x1000, half, 0}, {0x1000, half, 0}}, {{0x1000, half, 0}, {0x1000, half, 0}}),
               Code::kInvalidArg, "more than 2^64 bytes");
  XferEntry xfer;
  REQUIRE(f.Build({{0x1000, 64, 0}, {0x1000, 64, 0}, {0x1000, 64, 0}},
                  {{0x2000, 64, 0}, {0x2000, 64, 0}, {0x2000, 64, 0}}, &xfer)
              .ok());
  CHECK_EQ(xfer.regions.size(), size_t{1});
  CHECK_EQ(xfer.plan->bytes, uint64_t{192});
}

TEST("plan: overlapping regions: a descriptor is found in any region that holds it") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0x10000, 0x100000);  // large
  RegionEntry* inner = AddRegistered(f.tables.regions(), 0x20000, 0x100);  // starts later, short
  XferEntry xfer;
  // Past the end of `inner`, still inside the large one.
  REQUIRE(f.Build({{0x20080, 0x1000, 0}}, {{0x900000, 0x1000, 0}}, &xfer).ok());
  CHECK(xfer.plan->segments[0].local_region != &inner->region);
}

// Against a brute-force oracle: whatever the regions and descriptors, the
// plan builder agrees on which descriptors are held by some region.
TEST("plan: random regions and descriptors agree with a linear scan") {
  std::mt19937_64 random(20261202);
  for (int round = 0; round < 2000; ++round) {
    Fixture f(std::vector<RemoteRegion>{});
    f.peer->peer->regions_known = false;
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    const int count = 1 + static_cast<int>(random() % 6);
    for (int i = 0; i < count; ++i) {
      const uint64_t start = (random() % 64) * 256;
      const uint64_t length = 1 + random() % 4096;
      AddRegistered(f.tables.regions(), start + 0x100000, length);
      spans.emplace_back(start + 0x100000, length);
    }
    const uint64_t address = 0x100000 - 512 + random() % (64 * 256 + 4096);
    const uint64_t length = 1 + random() % 2048;
    bool held = false, starts_inside = false;
    for (const auto& [start, len] : spans) {
      if (address >= start && address - start < len) {
        starts_inside = true;
        if (length <= len - (address - start)) held = true;
      }
    }
    const Status s = f.Build({{address, length, 0}}, {{0x42, length, 0}});
    if (held) {
      CHECK(s.ok());
    } else if (starts_inside) {
      CHECK(s.code == Code::kOutOfRange);
    } else {
      CHECK(s.code == Code::kNotRegistered);
    }
  }
}

TEST("plan: a descriptor into a region its owner revoked is not registered") {
  Fixture f;
  AddRegistered(f.tables.regions(), 0x10000, 8192);
  f.peer->peer->regions[0].revoked = true;
  CHECK_STATUS(f.Build({{0x10000, 4096, 0}}, {{0x900000, 4096, 0}}), Code::kNotRegistered, "has deregistered");
}
