#include "ucx/ucx_metadata.h"

#include <cstring>

#include "crc32.h"
#include "wire.h"

namespace kvxfer {

namespace {

using wire::Reader;
using wire::Writer;

constexpr uint8_t kMagic[4] = {'K', 'V', 'X', 'M'};
constexpr uint8_t kEngineUcx = 1;
constexpr size_t kHeaderSize = 16;
constexpr uint32_t kMaxWorkerAddress = 64 * 1024;
constexpr uint32_t kMaxKey = 64 * 1024;
constexpr uint32_t kMaxRegions = 1u << 20;
// The fixed part, the u32 key length and the shared pages.
constexpr size_t kSharedPagesBytes = 4 * 8 + 2 * 4;
constexpr size_t kRegionFixedSize = wire::kRegionFixedBytes + 4 + kSharedPagesBytes;
// Pages are multiples of this on every host.
constexpr uint64_t kPageUnit = 4096;

Status Bad(const std::string& why) {
  return Status::Error(Code::kBadMetadata, "malformed peer metadata: " + why);
}

}  // namespace

std::vector<uint8_t> PackUcxMetadata(const std::string& name, const ProcessIdentity& identity,
                                     const std::vector<uint8_t>& worker_address,
                                     const std::vector<const LocalRegion*>& regions) {
  std::vector<uint8_t> blob(kHeaderSize);
  Writer w(&blob);
  w.Put<uint16_t>(static_cast<uint16_t>(name.size()));
  w.PutBytes(reinterpret_cast<const uint8_t*>(name.data()), name.size());
  wire::PutIdentity(w, identity);
  w.Put<uint32_t>(static_cast<uint32_t>(worker_address.size()));
  w.PutBytes(worker_address.data(), worker_address.size());
  w.Put<uint32_t>(static_cast<uint32_t>(regions.size()));
  for (const LocalRegion* r : regions) {
    wire::PutRegion(w, {r->address, r->length, static_cast<uint8_t>(r->kind), r->device});
    w.Put<uint32_t>(static_cast<uint32_t>(r->remote_key.size()));
    w.PutBytes(r->remote_key.data(), r->remote_key.size());
    w.Put<uint64_t>(r->shared.begin);
    w.Put<uint64_t>(r->shared.length);
    w.Put<uint64_t>(r->shared.offset);
    w.Put<uint64_t>(r->shared.inode);
    w.Put<uint32_t>(r->shared.fd);
    w.Put<uint32_t>(0);
  }
  const uint32_t body_length = static_cast<uint32_t>(blob.size() - kHeaderSize);
  const uint32_t crc = Crc32(blob.data() + kHeaderSize, body_length);
  std::memcpy(blob.data(), kMagic, 4);
  const uint16_t version = kUcxMetadataVersion;
  std::memcpy(blob.data() + 4, &version, 2);
  blob[6] = kEngineUcx;
  blob[7] = 0;
  std::memcpy(blob.data() + 8, &body_length, 4);
  std::memcpy(blob.data() + 12, &crc, 4);
  return blob;
}

Status ParseUcxMetadata(const uint8_t* blob, size_t length, UcxMetadata* out) {
  if (blob == nullptr || length < kHeaderSize) return Bad("shorter than its header");
  if (std::memcmp(blob, kMagic, 4) != 0) return Bad("not a kvxfer metadata blob");
  uint16_t version;
  std::memcpy(&version, blob + 4, 2);
  if (version != kUcxMetadataVersion) {
    return Bad("format version " + std::to_string(version) + " is not supported (expected " +
               std::to_string(kUcxMetadataVersion) + ")");
  }
  if (blob[6] != kEngineUcx) {
    return Bad("made by another engine (id " + std::to_string(blob[6]) +
               "); both agents must use the same engine");
  }
  if (blob[7] != 0) return Bad("reserved header byte is set");
  uint32_t body_length, crc;
  std::memcpy(&body_length, blob + 8, 4);
  std::memcpy(&crc, blob + 12, 4);
  if (body_length != length - kHeaderSize) return Bad("length field does not match the blob");
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  // A fuzzer's mutations would all stop here; test/fuzz/native builds with
  // the check off so they reach the parser behind it.
  if (Crc32(blob + kHeaderSize, body_length) != crc) return Bad("checksum mismatch (corrupted)");
#else
  (void)crc;
#endif

  Reader r(blob + kHeaderSize, body_length);
  const uint16_t name_length = r.Get<uint16_t>();
  if (name_length == 0 || name_length > limits::kMaxAgentNameBytes) return Bad("agent name length");
  const uint8_t* name = r.Take(name_length);
  const ProcessIdentity identity = wire::GetIdentity(r);
  const uint32_t address_length = r.Get<uint32_t>();
  if (address_length == 0 || address_length > kMaxWorkerAddress) return Bad("worker address length");
  const uint8_t* address = r.Take(address_length);
  const uint32_t region_count = r.Get<uint32_t>();
  if (r.failed()) return Bad("truncated");
  if (region_count > kMaxRegions || region_count * kRegionFixedSize > r.left()) {
    return Bad("region count");
  }
  UcxMetadata md;
  md.name.assign(reinterpret_cast<const char*>(name), name_length);
  md.identity = identity;
  if (md.name.find('\0') != std::string::npos) return Bad("agent name contains NUL");
  md.worker_address = address;
  md.worker_address_length = address_length;
  md.regions.reserve(region_count);
  for (uint32_t i = 0; i < region_count; ++i) {
    const wire::RegionFields fields = wire::GetRegion(r);
    UcxMetadataRegion region;
    region.address = fields.address;
    region.length = fields.length;
    region.device = fields.device;
    region.key_length = r.Get<uint32_t>();
    if (r.failed()) return Bad("truncated region " + std::to_string(i));
    if (fields.kind > static_cast<uint8_t>(MemKind::kVram)) return Bad("region " + std::to_string(i) + " kind");
    region.kind = static_cast<MemKind>(fields.kind);
    if (!fields.BoundsValid()) return Bad("region " + std::to_string(i) + " bounds");
    if (region.key_length == 0 || region.key_length > kMaxKey) {
      return Bad("region " + std::to_string(i) + " key length");
    }
    region.key = r.Take(region.key_length);
    SharedPagesInfo& shared = region.shared;
    shared.begin = r.Get<uint64_t>();
    shared.length = r.Get<uint64_t>();
    shared.offset = r.Get<uint64_t>();
    shared.inode = r.Get<uint64_t>();
    shared.fd = r.Get<uint32_t>();
    const uint32_t reserved = r.Get<uint32_t>();
    if (r.failed()) return Bad("truncated region " + std::to_string(i));
    if (reserved != 0) return Bad("region " + std::to_string(i) + " reserved field is set");
    // Whole pages inside the region, or nothing at all.
    const bool none = shared.length == 0 && shared.begin == 0 && shared.offset == 0 && shared.inode == 0 &&
                      shared.fd == 0;
    const bool pages = shared.length != 0 && fields.kind == static_cast<uint8_t>(MemKind::kDram) &&
                       shared.begin >= fields.address && shared.begin % kPageUnit == 0 &&
                       shared.length % kPageUnit == 0 && shared.offset % kPageUnit == 0 &&
                       shared.length <= fields.length && shared.begin - fields.address <= fields.length - shared.length;
    if (!none && !pages) return Bad("region " + std::to_string(i) + " shared pages");
    md.regions.push_back(region);
  }
  if (r.left() != 0) return Bad("trailing bytes");
  *out = std::move(md);
  return Status::Ok();
}

Status NarrowUcxMetadata(const std::vector<uint8_t>& full, const std::vector<const LocalRegion*>& regions,
                         std::vector<uint8_t>* out) {
  UcxMetadata md;
  Status s = ParseUcxMetadata(full.data(), full.size(), &md);
  if (!s.ok()) return s;
  const std::vector<uint8_t> worker_address(md.worker_address, md.worker_address + md.worker_address_length);
  *out = PackUcxMetadata(md.name, md.identity, worker_address, regions);
  return Status::Ok();
}

}  // namespace kvxfer
