// Little-endian fields in and out of the metadata blobs. Blobs come from
// peers: Reader trusts nothing, and any read past the end latches a failure
// that the caller checks once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "identity.h"

namespace kvxfer::wire {

class Writer {
 public:
  explicit Writer(std::vector<uint8_t>* out) : out_(out) {}
  template <typename T>
  void Put(T value) {
    uint8_t bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));
    out_->insert(out_->end(), bytes, bytes + sizeof(T));
  }
  void PutBytes(const uint8_t* data, size_t length) { out_->insert(out_->end(), data, data + length); }

 private:
  std::vector<uint8_t>* out_;
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t length) : data_(data), left_(length) {}
  template <typename T>
  T Get() {
    T value{};
    if (left_ < sizeof(T)) {
      failed_ = true;
      return value;
    }
    std::memcpy(&value, data_, sizeof(T));
    data_ += sizeof(T);
    left_ -= sizeof(T);
    return value;
  }
  const uint8_t* Take(size_t length) {
    if (left_ < length) {
      failed_ = true;
      return nullptr;
    }
    const uint8_t* p = data_;
    data_ += length;
    left_ -= length;
    return p;
  }
  size_t left() const { return left_; }
  bool failed() const { return failed_; }

 private:
  const uint8_t* data_;
  size_t left_;
  bool failed_ = false;
};

// 48 bytes: u64 incarnation, 16 bytes boot id, u32 pid, u32 reserved,
// u64 start time, u64 pid namespace.
constexpr size_t kIdentityBytes = 48;

inline void PutIdentity(Writer& w, const ProcessIdentity& id) {
  w.Put<uint64_t>(id.incarnation);
  w.PutBytes(id.boot_id.data(), id.boot_id.size());
  w.Put<uint32_t>(id.pid);
  w.Put<uint32_t>(0);
  w.Put<uint64_t>(id.start_time);
  w.Put<uint64_t>(id.pid_namespace);
}

inline ProcessIdentity GetIdentity(Reader& r) {
  ProcessIdentity id;
  id.incarnation = r.Get<uint64_t>();
  const uint8_t* boot = r.Take(id.boot_id.size());
  if (boot != nullptr) std::memcpy(id.boot_id.data(), boot, id.boot_id.size());
  id.pid = r.Get<uint32_t>();
  r.Get<uint32_t>();
  id.start_time = r.Get<uint64_t>();
  id.pid_namespace = r.Get<uint64_t>();
  return id;
}

// The fixed part of a region entry, the same in every blob: u64 address,
// u64 length, u8 kind, 3 bytes reserved, u32 device (24 bytes).
constexpr size_t kRegionFixedBytes = 24;

struct RegionFields {
  uint64_t address = 0;
  uint64_t length = 0;
  uint8_t kind = 0;
  uint32_t device = 0;
  // Non-empty and not wrapping around the address space.
  bool BoundsValid() const { return length != 0 && length - 1 <= UINT64_MAX - address; }
};

inline void PutRegion(Writer& w, const RegionFields& region) {
  w.Put<uint64_t>(region.address);
  w.Put<uint64_t>(region.length);
  w.Put<uint8_t>(region.kind);
  w.Put<uint8_t>(0);
  w.Put<uint16_t>(0);
  w.Put<uint32_t>(region.device);
}

inline RegionFields GetRegion(Reader& r) {
  RegionFields region;
  region.address = r.Get<uint64_t>();
  region.length = r.Get<uint64_t>();
  region.kind = r.Get<uint8_t>();
  r.Take(3);
  region.device = r.Get<uint32_t>();
  return region;
}

// A revocation: the sender deregistered these regions, and a peer must
// refuse descriptors into them. "KVRV", u16 version 1, u16 reserved, the
// sender's u64 incarnation (a revocation applies to the incarnation that
// published the regions), u32 count, u32 reserved, then count region
// entries. The same bytes travel in a UCX control frame and in a NIXL
// notification (after kRevocationMarker).
constexpr uint8_t kRevocationMagic[4] = {'K', 'V', 'R', 'V'};
constexpr uint16_t kRevocationVersion = 1;
constexpr size_t kMaxRevokedRegions = 1024;

inline std::vector<uint8_t> PackRevocation(uint64_t incarnation, const std::vector<RegionFields>& regions) {
  std::vector<uint8_t> out;
  Writer w(&out);
  w.PutBytes(kRevocationMagic, sizeof kRevocationMagic);
  w.Put<uint16_t>(kRevocationVersion);
  w.Put<uint16_t>(0);
  w.Put<uint64_t>(incarnation);
  w.Put<uint32_t>(static_cast<uint32_t>(regions.size()));
  w.Put<uint32_t>(0);
  for (const RegionFields& r : regions) PutRegion(w, r);
  return out;
}

// False for anything but a well-formed revocation, which comes from a peer.
inline bool ParseRevocation(const uint8_t* data, size_t length, uint64_t* incarnation,
                            std::vector<RegionFields>* regions) {
  Reader r(data, length);
  const uint8_t* magic = r.Take(sizeof kRevocationMagic);
  if (magic == nullptr || std::memcmp(magic, kRevocationMagic, sizeof kRevocationMagic) != 0) return false;
  if (r.Get<uint16_t>() != kRevocationVersion) return false;
  r.Get<uint16_t>();
  *incarnation = r.Get<uint64_t>();
  const uint32_t count = r.Get<uint32_t>();
  r.Get<uint32_t>();
  if (r.failed() || count > kMaxRevokedRegions || r.left() != count * kRegionFixedBytes) return false;
  regions->clear();
  for (uint32_t i = 0; i < count; ++i) regions->push_back(GetRegion(r));
  return !r.failed();
}

}  // namespace kvxfer::wire
