#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine.h"
#include "identity.h"
#include "status.h"

namespace kvxfer {

// kvxfer's envelope around NIXL's own metadata. NIXL's blobs carry no
// integrity check (NIXL 1.4 accepts some corrupted ones and keeps a
// half-loaded peer after refusing others), and say nothing kvxfer can read:
// the envelope adds a CRC, who the agent is (identity.h: same-host liveness,
// incarnations) and its region table, so remote descriptors are checked at
// prepare() as on the UCX engine. A bare blob from another NIXL agent
// (Python, C++) is still accepted as is, unchecked.
//   0   "KVXN", u16 version (2), u16 reserved,
//   8   u32 NIXL blob length, u32 CRC-32 of everything after the header
//   16  the NIXL blob
//   then identity (48 bytes, wire.h), u32 region count, regions:
//        u64 address, u64 length, u8 kind, 3 bytes reserved, u32 device
std::vector<uint8_t> NixlEnvelope(const std::vector<uint8_t>& raw, const ProcessIdentity& identity,
                                  const std::vector<const LocalRegion*>& regions);

// What a blob holds: the NIXL blob inside it, and for an envelope who sent
// it and its regions.
struct NixlUnwrapped {
  const uint8_t* raw = nullptr;
  size_t raw_length = 0;
  bool enveloped = false;
  ProcessIdentity identity;
  std::vector<RemoteRegion> regions;  // sorted by address
};

// Untrusted bytes: a blob that does not start with the envelope's magic is
// taken as a bare NIXL blob (raw, not enveloped); one that does must be a
// whole, sound envelope or it is ERR_BAD_METADATA. Views point into `blob`.
Status UnwrapNixlMetadata(const uint8_t* blob, size_t length, NixlUnwrapped* out);

}  // namespace kvxfer
