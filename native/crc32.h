#pragma once

#include <cstddef>
#include <cstdint>

namespace kvxfer {

// CRC-32 (IEEE 802.3, as zlib): catches corrupted metadata before any of it
// reaches an engine's own parser.
uint32_t Crc32(const uint8_t* data, size_t length);

}  // namespace kvxfer
