// The packed binary descriptor list shared with lib/descs.ts (its layout and
// limits: DescList* in protocol.h). Lists come from peers, so every field is
// checked before use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "protocol.h"
#include "status.h"

namespace kvxfer {

constexpr size_t kDescHeaderSize = limits::kDescListHeaderBytes;
constexpr size_t kDescEntrySize = limits::kDescListEntryBytes;

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
