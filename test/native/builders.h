// Inputs for the core tests: packed descriptor lists as lib/descs.ts writes
// them, registered regions and loaded peers as the tables hold them.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "agent/tables.h"
#include "protocol.h"

namespace testing {

using kvxfer::Desc;

inline std::vector<uint8_t> Pack(const std::vector<Desc>& descs) {
  std::vector<uint8_t> out(kvxfer::limits::kDescListHeaderBytes + descs.size() * kvxfer::limits::kDescListEntryBytes);
  const uint32_t magic = kvxfer::limits::kDescListMagic;
  const uint16_t version = kvxfer::limits::kDescListVersion;
  const uint32_t count = static_cast<uint32_t>(descs.size());
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &version, 2);
  std::memcpy(out.data() + 8, &count, 4);
  uint8_t* p = out.data() + kvxfer::limits::kDescListHeaderBytes;
  for (const Desc& d : descs) {
    std::memcpy(p, &d.address, 8);
    std::memcpy(p + 8, &d.length, 8);
    std::memcpy(p + 16, &d.device, 4);
    p += kvxfer::limits::kDescListEntryBytes;
  }
  return out;
}

inline kvxfer::RegionEntry* AddRegistered(kvxfer::RegionTable& regions, uint64_t address, uint64_t length,
                                          kvxfer::MemKind kind = kvxfer::MemKind::kDram, uint32_t device = 0) {
  kvxfer::RegionEntry* entry = regions.Add();
  entry->region.address = address;
  entry->region.length = length;
  entry->region.kind = kind;
  entry->region.device = device;
  regions.MarkRegistered(entry);
  return entry;
}

// A peer as the UCX engine loads it: regions known, sorted by address.
inline std::unique_ptr<kvxfer::Peer> MakePeer(const std::string& name,
                                              std::vector<kvxfer::RemoteRegion> regions = {}) {
  auto peer = std::make_unique<kvxfer::Peer>();
  peer->name = name;
  for (const kvxfer::RemoteRegion& r : regions) peer->regions.Add(std::make_unique<kvxfer::RemoteRegion>(r));
  return peer;
}

// Records what the tables ask of the owner thread.
class RecordingEvents : public kvxfer::TableEvents {
 public:
  void DestroyPeer(kvxfer::Peer* peer) override { destroyed.push_back(peer); }
  void ReleasePlan(std::unique_ptr<kvxfer::Plan> plan) override { released.push_back(std::move(plan)); }
  void DropRemoteRegions(kvxfer::Peer* peer, std::vector<std::unique_ptr<kvxfer::RemoteRegion>> regions) override {
    for (auto& r : regions) dropped.push_back(std::move(r));
  }

  std::vector<kvxfer::Peer*> destroyed;
  std::vector<std::unique_ptr<kvxfer::Plan>> released;
  std::vector<std::unique_ptr<kvxfer::RemoteRegion>> dropped;
};

}  // namespace testing
