// Everything the addon and the TypeScript layer must agree on, written once.
//
// lib/protocol.ts is generated from this file (scripts/gen-protocol.js, run by
// `npm run build:ts`; `--check` tells whether the committed copy is current),
// and the addon exports the same tables at load (`protocol`, native/addon.cc):
// lib/native.ts refuses an addon whose tables differ from the library's, so a
// stale build fails at load with a clear message instead of misreading events.
//
// The generator reads only the X(...) lines of the lists below: one entry a
// line, integer values as C literals (decimal, hex, `<<`, `*`).
#pragma once

#include <cstdint>

// Stable error codes, in the order of kvxfer::Code (status.h), after kOk:
// X(enumerator, public name, when: the doc comment of ErrorCode's member).
#define KVXFER_ERROR_CODES(X)                                                                                 \
  X(InvalidArg, "ERR_INVALID_ARG", "A wrong argument: a type, a count or length mismatch, an empty descriptor, a notification over 16 KiB, a malformed descriptor list, memory registered as the wrong kind.") \
  X(NotRegistered, "ERR_NOT_REGISTERED", "A local descriptor in no registered region, or a remote one in none of the peer's.") \
  X(OutOfRange, "ERR_OUT_OF_RANGE", "A descriptor, slice or view that starts inside a region and runs past its end.") \
  X(UnknownPeer, "ERR_UNKNOWN_PEER", "A peer name never loaded, forgotten, or replaced by newer metadata.") \
  X(BadMetadata, "ERR_BAD_METADATA", "A metadata blob that is truncated, corrupted, or from another format version or engine.") \
  X(PeerUnreachable, "ERR_PEER_UNREACHABLE", "The peer died, or no transport reaches it.")                                 \
  X(Timeout, "ERR_TIMEOUT", "The operation's timeoutMs passed.")                                                     \
  X(Aborted, "ERR_ABORTED", "The operation's signal aborted.")                                                      \
  X(Closed, "ERR_CLOSED", "The agent is closed, or was closed while the operation was pending.")                    \
  X(Busy, "ERR_BUSY", "The resource is in use: a region with unreleased transfers, a transfer still in flight.")     \
  X(Engine, "ERR_ENGINE", "UCX, NIXL or CUDA failed, or the engine cannot do it at all (VRAM on a UCX without CUDA); engineStatus and engineCode say how.")                               \
  X(NameInUse, "ERR_NAME_IN_USE", "Metadata of a second live agent under the name of a loaded one: forget the loaded one first.") \
  X(Unauthorized, "ERR_UNAUTHORIZED", "A side-channel exchange where one side did not prove it knows the shared secret, or etcd refused the credentials.") \
  X(LeaseExpired, "ERR_LEASE_EXPIRED", "A lease ran out: a KV pull the offering worker could not confirm while its lease held (the blocks may have been reused, so their bytes are not handed out), or an etcd membership's record (etcd no longer holds it).")

// Memory kinds as registerAddress() and prepare() take them:
// X(enumerator, value, public name).
#define KVXFER_MEM_KINDS(X) \
  X(Dram, 0, "dram")        \
  X(Vram, 1, "vram")        \
  X(File, 2, "file")

// Transfer directions as prepare() takes them: X(enumerator, value, public name).
#define KVXFER_XFER_OPS(X) \
  X(Write, 0, "write")     \
  X(Read, 1, "read")

// The `kind` of the event objects delivered to JS: X(name, value).
#define KVXFER_EVENT_KINDS(X) \
  X(Operation, 0)             \
  X(Notification, 1)          \
  X(PeerFailed, 2)            \
  X(PeerChanged, 3)           \
  X(NameConflict, 4)          \
  X(MetadataChanged, 5)

// Numbers both sides check or lay out: X(name, value).
//  DescList*: the packed descriptor list (native/descs.h, lib/descs.ts): a
//    16-byte header (magic "KVDL" read as a little-endian u32, u16 version,
//    u16 reserved, u32 count, u32 reserved), then 24 bytes per descriptor
//    (u64 address, u64 length, u32 device, u32 reserved). MaxDescriptors is
//    far above any KV layout (a 1 TiB pool in 4 KiB blocks is 2^28) and small
//    enough that count * entry size cannot overflow.
//  NixlEnvelopeBytes: kvxfer's header before a NIXL metadata blob
//    (native/nixl/nixl_engine.cc); metadata({ format: 'nixl' }) skips it.
//  MaxNotificationBytes, MaxAgentNameBytes: enforced on what this agent sends
//    and on what peers send it.
//  MaxBusyPollUs: the upper bound of Agent.create({ busyPollUs }).
#define KVXFER_LIMITS(X)                 \
  X(DescListMagic, 0x4c44564b)           \
  X(DescListVersion, 1)                  \
  X(DescListHeaderBytes, 16)             \
  X(DescListEntryBytes, 24)              \
  X(MaxDescriptors, 1 << 28)             \
  X(NixlEnvelopeBytes, 16)               \
  X(MaxNotificationBytes, 16 * 1024)     \
  X(MaxAgentNameBytes, 255)              \
  X(MaxBusyPollUs, 10000)

namespace kvxfer {

enum class MemKind : uint8_t {
#define KVXFER_ENUMERATOR(name, value, text) k##name = value,
  KVXFER_MEM_KINDS(KVXFER_ENUMERATOR)
#undef KVXFER_ENUMERATOR
};

enum class XferOp : uint8_t {
#define KVXFER_ENUMERATOR(name, value, text) k##name = value,
  KVXFER_XFER_OPS(KVXFER_ENUMERATOR)
#undef KVXFER_ENUMERATOR
};

enum class EventKind : uint8_t {
#define KVXFER_ENUMERATOR(name, value) k##name = value,
  KVXFER_EVENT_KINDS(KVXFER_ENUMERATOR)
#undef KVXFER_ENUMERATOR
};

namespace limits {
#define KVXFER_LIMIT(name, value) constexpr uint64_t k##name = value;
KVXFER_LIMITS(KVXFER_LIMIT)
#undef KVXFER_LIMIT
}  // namespace limits

inline const char* MemKindName(MemKind kind) {
  switch (kind) {
#define KVXFER_CASE(name, value, text) \
  case MemKind::k##name:               \
    return text;
    KVXFER_MEM_KINDS(KVXFER_CASE)
#undef KVXFER_CASE
  }
  return "unknown";
}

}  // namespace kvxfer
