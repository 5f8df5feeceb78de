// The UCX engine's control messages: notifications, revocations and pushed
// metadata, sent between agents beside their transfers.
//
// They travel as UCX tagged messages, eagerly, not as active messages: UCX
// sends an active message longer than its short limit (about 100 bytes
// over shared memory) only after resolving the receiver's endpoint ID, for
// which the receiving worker creates an endpoint back to the sender. Over
// shared memory UCX drops that endpoint only when the sender's process
// exits, so a long-lived agent kept about 30 KB for every agent that had
// ever pushed it metadata (1,000 agents: 349 -> 3,235 mappings). An eager
// tagged message names no endpoint (UCX 1.13 to 1.22): nothing is created
// at the receiver. The engine keeps UCX's rendezvous off for them
// (RNDV_THRESH), which would resolve the ID again.
//
// A frame: u8 version, u64 the sender's incarnation, u16 the length of its
// name, the name, then the payload. It comes from a peer: ParseControlFrame
// trusts nothing. No V8 or UCX here, so that the fuzz target reaches it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "protocol.h"
#include "wire.h"

namespace kvxfer {

// The high 32 bits of every control tag ("KVXF"); the low byte is the kind,
// the bytes between are zero.
constexpr uint64_t kControlTag = 0x4b56584600000000ull;

enum class ControlKind : uint8_t { kNotification = 1, kRevocation = 2, kMetadata = 3 };

constexpr uint8_t kControlVersion = 2;
constexpr size_t kControlFixedBytes = 1 + sizeof(uint64_t) + sizeof(uint16_t);
// Larger pushed metadata is dropped (a peer's registrations reach us
// otherwise only by the application loading its metadata).
constexpr size_t kMaxPushedMetadataBytes = 16 << 20;
constexpr size_t kMaxRevocationBytes = 24 + wire::kMaxRevokedRegions * wire::kRegionFixedBytes;

inline uint64_t ControlTagOf(ControlKind kind) { return kControlTag | static_cast<uint8_t>(kind); }

// The kind a tag names, or false for one no kvxfer peer of this version sends.
inline bool ControlKindOf(uint64_t tag, ControlKind* kind) {
  if ((tag & ~uint64_t{0xff}) != kControlTag) return false;
  const auto k = static_cast<uint8_t>(tag);
  if (k < static_cast<uint8_t>(ControlKind::kNotification) || k > static_cast<uint8_t>(ControlKind::kMetadata)) {
    return false;
  }
  *kind = static_cast<ControlKind>(k);
  return true;
}

// The most bytes a frame of this kind may have; longer ones are dropped
// unread.
inline size_t MaxControlFrameBytes(ControlKind kind) {
  const size_t payload = kind == ControlKind::kNotification ? limits::kMaxNotificationBytes
                         : kind == ControlKind::kRevocation ? kMaxRevocationBytes
                                                            : kMaxPushedMetadataBytes;
  return kControlFixedBytes + limits::kMaxAgentNameBytes + payload;
}

// What leads every frame an agent sends; the payload is appended to a copy.
inline std::vector<uint8_t> PackControlHeader(uint64_t incarnation, const std::string& sender) {
  std::vector<uint8_t> out;
  wire::Writer w(&out);
  w.Put<uint8_t>(kControlVersion);
  w.Put<uint64_t>(incarnation);
  w.Put<uint16_t>(static_cast<uint16_t>(sender.size()));
  w.PutBytes(reinterpret_cast<const uint8_t*>(sender.data()), sender.size());
  return out;
}

struct ControlFrame {
  std::string sender;
  uint64_t incarnation = 0;
  const uint8_t* payload = nullptr;  // inside the parsed bytes
  size_t payload_length = 0;
};

// False for anything but a well-formed frame.
inline bool ParseControlFrame(const uint8_t* data, size_t length, ControlFrame* frame) {
  wire::Reader r(data, length);
  if (r.Get<uint8_t>() != kControlVersion) return false;
  const uint64_t incarnation = r.Get<uint64_t>();
  const uint16_t name_length = r.Get<uint16_t>();
  if (r.failed() || name_length == 0 || name_length > limits::kMaxAgentNameBytes) return false;
  const uint8_t* name = r.Take(name_length);
  if (name == nullptr) return false;
  if (std::memchr(name, '\0', name_length) != nullptr) return false;
  frame->sender.assign(reinterpret_cast<const char*>(name), name_length);
  frame->incarnation = incarnation;
  frame->payload_length = r.left();
  frame->payload = r.Take(frame->payload_length);
  return true;
}

}  // namespace kvxfer
