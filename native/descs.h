// The packed binary descriptor list shared with lib/descs.ts. Lists come from
// peers, so every field is checked before use.
//
// Layout (little endian):
//   header  16 bytes: magic "KVDL", u16 version (1), u16 reserved, u32 count,
//                     u32 reserved
//   entries 24 bytes each: u64 address, u64 length, u32 device, u32 reserved
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "status.h"

namespace kvxfer {

constexpr size_t kDescHeaderSize = 16;
constexpr size_t kDescEntrySize = 24;
constexpr uint16_t kDescListVersion = 1;
// Far above any KV layout (a 1 TiB pool in 4 KiB blocks is 2^28) and small
// enough that count * entry size cannot overflow.
constexpr uint32_t kMaxDescriptors = 1u << 28;

struct Desc {
  uint64_t address;
  uint64_t length;
  uint32_t device;
};

// A checked, zero-copy view over a list's bytes; valid while they are.
class DescListView {
 public:
  // Checks the header, the size, and every entry (non-empty, no wrap-around).
  static Status Parse(const uint8_t* data, size_t length, DescListView* out);

  uint32_t count() const { return count_; }
  Desc at(uint32_t index) const {
    const uint8_t* p = entries_ + static_cast<size_t>(index) * kDescEntrySize;
    Desc d;
    std::memcpy(&d.address, p, 8);
    std::memcpy(&d.length, p + 8, 8);
    std::memcpy(&d.device, p + 16, 4);
    return d;
  }

 private:
  const uint8_t* entries_ = nullptr;
  uint32_t count_ = 0;
};

}  // namespace kvxfer
