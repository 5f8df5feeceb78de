// libFuzzer target: the UCX engine's control messages from peers
// (native/ucx/ucx_control.h): the tag's kind, the frame, and a revocation's
// payload (native/wire.h). Input: the u64 tag, then the frame. A frame it
// accepts must name a sender of 1-255 bytes with no NUL, keep its payload
// inside the input, and be exactly what the sender's packer writes for those
// fields; a revocation it accepts must have at most 1,024 regions and pack
// again to the same fields.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ucx/ucx_control.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < sizeof(uint64_t)) return 0;
  uint64_t tag = 0;
  std::memcpy(&tag, data, sizeof tag);
  const uint8_t* bytes = data + sizeof tag;
  const size_t length = size - sizeof tag;
  kvxfer::ControlKind kind;
  if (!kvxfer::ControlKindOf(tag, &kind)) return 0;
  if (kvxfer::ControlTagOf(kind) != tag) std::abort();
  if (length > kvxfer::MaxControlFrameBytes(kind)) return 0;
  kvxfer::ControlFrame frame;
  if (!kvxfer::ParseControlFrame(bytes, length, &frame)) return 0;
  if (frame.sender.empty() || frame.sender.size() > kvxfer::limits::kMaxAgentNameBytes ||
      frame.sender.find('\0') != std::string::npos) {
    std::abort();
  }
  if (frame.payload < bytes || frame.payload_length > length ||
      frame.payload - bytes != static_cast<ptrdiff_t>(length - frame.payload_length)) {
    std::abort();
  }
  std::vector<uint8_t> again = kvxfer::PackControlHeader(frame.incarnation, frame.sender);
  again.insert(again.end(), frame.payload, frame.payload + frame.payload_length);
  if (again.size() != length || std::memcmp(again.data(), bytes, length) != 0) std::abort();
  if (kind != kvxfer::ControlKind::kRevocation) return 0;
  uint64_t incarnation = 0;
  std::vector<kvxfer::wire::RegionFields> regions;
  if (!kvxfer::wire::ParseRevocation(frame.payload, frame.payload_length, &incarnation, &regions)) return 0;
  if (regions.size() > kvxfer::wire::kMaxRevokedRegions) std::abort();
  const std::vector<uint8_t> packed = kvxfer::wire::PackRevocation(incarnation, regions);
  uint64_t incarnation2 = 0;
  std::vector<kvxfer::wire::RegionFields> regions2;
  if (packed.size() != frame.payload_length ||
      !kvxfer::wire::ParseRevocation(packed.data(), packed.size(), &incarnation2, &regions2) ||
      incarnation2 != incarnation || regions2.size() != regions.size()) {
    std::abort();
  }
  for (size_t i = 0; i < regions.size(); ++i) {
    const kvxfer::wire::RegionFields &a = regions[i], &b = regions2[i];
    if (a.address != b.address || a.length != b.length || a.kind != b.kind || a.device != b.device) std::abort();
  }
  return 0;
}
