#include "nixl/nixl_envelope.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "crc32.h"
#include "wire.h"

namespace kvxfer {

namespace {

constexpr uint8_t kEnvelopeMagic[4] = {'K', 'V', 'X', 'N'};
constexpr size_t kEnvelopeHeader = limits::kNixlEnvelopeBytes;
constexpr uint16_t kEnvelopeVersion = 2;
constexpr uint32_t kMaxEnvelopeRegions = 1u << 20;

}  // namespace

std::vector<uint8_t> NixlEnvelope(const std::vector<uint8_t>& raw, const ProcessIdentity& identity,
                                  const std::vector<const LocalRegion*>& regions) {
  std::vector<uint8_t> blob(kEnvelopeHeader);
  wire::Writer w(&blob);
  w.PutBytes(raw.data(), raw.size());
  wire::PutIdentity(w, identity);
  w.Put<uint32_t>(static_cast<uint32_t>(regions.size()));
  for (const LocalRegion* r : regions) {
    wire::PutRegion(w, {r->address, r->length, static_cast<uint8_t>(r->kind), r->device});
  }
  const uint32_t length = static_cast<uint32_t>(raw.size());
  const uint32_t crc = Crc32(blob.data() + kEnvelopeHeader, blob.size() - kEnvelopeHeader);
  std::memcpy(blob.data(), kEnvelopeMagic, 4);
  std::memcpy(blob.data() + 4, &kEnvelopeVersion, 2);
  std::memcpy(blob.data() + 8, &length, 4);
  std::memcpy(blob.data() + 12, &crc, 4);
  return blob;
}

Status UnwrapNixlMetadata(const uint8_t* blob, size_t length, NixlUnwrapped* out) {
  if (length < 4 || std::memcmp(blob, kEnvelopeMagic, 4) != 0) {
    out->raw = blob;
    out->raw_length = length;
    return Status::Ok();
  }
  auto bad = [](const std::string& why) {
    return Status::Error(Code::kBadMetadata, "malformed peer metadata: " + why);
  };
  if (length < kEnvelopeHeader) return bad("shorter than its header");
  uint16_t version;
  uint32_t raw_length, crc;
  std::memcpy(&version, blob + 4, 2);
  std::memcpy(&raw_length, blob + 8, 4);
  std::memcpy(&crc, blob + 12, 4);
  if (version != kEnvelopeVersion) return bad("envelope version " + std::to_string(version) + " is not supported");
  if (blob[6] != 0 || blob[7] != 0) return bad("reserved header bytes are set");
  const size_t body = length - kEnvelopeHeader;
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  if (Crc32(blob + kEnvelopeHeader, body) != crc) return bad("checksum mismatch (corrupted)");
#else
  (void)crc;  // test/fuzz/native: mutations reach the parser
#endif
  wire::Reader r(blob + kEnvelopeHeader, body);
  out->raw = r.Take(raw_length);
  out->raw_length = raw_length;
  out->identity = wire::GetIdentity(r);
  const uint32_t count = r.Get<uint32_t>();
  if (r.failed()) return bad("length field does not match the blob");
  if (count > kMaxEnvelopeRegions || r.left() != static_cast<size_t>(count) * wire::kRegionFixedBytes) {
    return bad("region count");
  }
  out->regions.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    const wire::RegionFields fields = wire::GetRegion(r);
    if (fields.kind > static_cast<uint8_t>(MemKind::kFile)) return bad("region " + std::to_string(i) + " kind");
    if (!fields.BoundsValid()) return bad("region " + std::to_string(i) + " bounds");
    RemoteRegion region;
    region.address = fields.address;
    region.length = fields.length;
    region.kind = static_cast<MemKind>(fields.kind);
    region.device = fields.device;
    out->regions.push_back(region);
  }
  std::sort(out->regions.begin(), out->regions.end(),
            [](const RemoteRegion& a, const RemoteRegion& b) { return a.address < b.address; });
  out->enveloped = true;
  return Status::Ok();
}

}  // namespace kvxfer
