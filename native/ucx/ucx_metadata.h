// The UCX engine's metadata blob: what a peer needs to connect to this agent
// and reach its regions. Blobs arrive from peers, so Parse trusts nothing:
// every length is bounded, every region checked, and a CRC over the body
// rejects corruption before any byte is handed to UCX.
//
// Layout (little endian):
//   0   magic "KVXM"
//   4   u16 format version
//   6   u8  engine (1: UCX)
//   7   u8  reserved (0)
//   8   u32 body length
//   12  u32 CRC-32 of the body
//   16  body: u16 name length, name,
//             identity (identity.h): u64 incarnation, 16 bytes boot id,
//               u32 pid, u32 reserved, u64 start time, u64 pid namespace,
//             u32 worker address length, worker address,
//             u32 region count, regions:
//               u64 address, u64 length, u8 kind, 3 bytes reserved,
//               u32 device, u32 key length, key,
//               shared pages (SharedPagesInfo, all 0 for none): u64 begin,
//                 u64 length, u64 file offset, u64 inode, u32 fd,
//                 u32 reserved
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"
#include "identity.h"

namespace kvxfer {

constexpr uint16_t kUcxMetadataVersion = 4;

struct UcxMetadataRegion {
  uint64_t address;
  uint64_t length;
  MemKind kind;
  uint32_t device;
  const uint8_t* key;  // points into the parsed blob
  uint32_t key_length;
  SharedPagesInfo shared;
};

struct UcxMetadata {
  std::string name;
  ProcessIdentity identity;
  const uint8_t* worker_address;  // points into the parsed blob
  uint32_t worker_address_length;
  std::vector<UcxMetadataRegion> regions;
};

std::vector<uint8_t> PackUcxMetadata(const std::string& name, const ProcessIdentity& identity,
                                     const std::vector<uint8_t>& worker_address,
                                     const std::vector<const LocalRegion*>& regions);

// Fills `out` with views into `blob`, valid while the blob is.
Status ParseUcxMetadata(const uint8_t* blob, size_t length, UcxMetadata* out);

}  // namespace kvxfer
