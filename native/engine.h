// The engine interface: what a transfer library (UCX, NIXL) must provide.
// Everything above it (argument checks, descriptor validation, promises,
// notifications, statistics) is shared by all engines.
//
// Threading: every method runs on the agent's owner thread unless its comment
// says otherwise. Completions are reported through EngineEvents, also on the
// owner thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "identity.h"
#include "protocol.h"
#include "status.h"
#include "wire.h"

namespace kvxfer {

// Memory kinds (MemKind, protocol.h): kFile is a file through NIXL's POSIX
// backend; address is the file offset and device the file descriptor, as in
// NIXL.

// The whole pages of a registered JS buffer that this process placed in a
// shared-memory file (shared_pages.h), so that an engine on this host maps
// them and copies with memcpy: [begin, begin + length) of this process is
// the file `fd` (inode `inode`) from `offset`. length 0: none.
struct SharedPagesInfo {
  uint64_t begin = 0;
  uint64_t length = 0;
  uint64_t offset = 0;
  uint64_t inode = 0;
  uint32_t fd = 0;
  bool operator==(const SharedPagesInfo& o) const {
    return begin == o.begin && length == o.length && offset == o.offset && inode == o.inode && fd == o.fd;
  }
};

// Memory this agent registered. The agent (JS thread) owns it; the engine
// fills in its handles on the owner thread.
struct LocalRegion {
  uint64_t address = 0;
  uint64_t length = 0;
  MemKind kind = MemKind::kDram;
  uint32_t device = 0;
  void* engine_handle = nullptr;
  // What a peer needs to reach this region (a packed UCX rkey). Written by
  // Register, read on the JS thread only after Register has completed.
  std::vector<uint8_t> remote_key;
  // Set on the JS thread before the region is submitted.
  SharedPagesInfo shared;
  // Set by Allocate: owns the memory. Buffer views share it, so the memory
  // stays mapped while a view of it is reachable, even after the region is
  // deregistered or the agent closed; the last holder frees it, on whatever
  // thread that happens.
  std::shared_ptr<void> memory;
};

// A region of a peer, as its metadata described it.
struct RemoteRegion {
  uint64_t address = 0;
  uint64_t length = 0;
  MemKind kind = MemKind::kDram;
  uint32_t device = 0;
  // Made and freed by the engine on the owner thread (UCX: the unpacked
  // rkey), read there by Post.
  void* engine_key = nullptr;
  // UCX: where [mapped_begin, mapped_end) of the region is mapped in this
  // process when that is the peer's shared memory on this host (all of it
  // where UCX allocated it, ucp_rkey_ptr; the whole pages of a registered
  // buffer the peer shared, SharedPagesInfo), else null. Lives as long as
  // engine_key.
  uint8_t* engine_mapped = nullptr;
  uint64_t mapped_begin = 0;
  uint64_t mapped_end = 0;
  // Its owner deregistered it (a revocation, or newer metadata without it):
  // descriptors into it are refused. JS thread only, like what follows.
  bool revoked = false;
  uint32_t users = 0;      // unreleased transfers using it
  uint64_t plan_mark = 0;  // the plan builder's scratch (RegionEntry::plan_mark)
};

// A peer's regions, sorted by address. Each stays at one address while the
// list changes (metadata updates add regions, pruning drops revoked ones):
// prepared plans point at them.
class RemoteRegionList {
 public:
  using Items = std::vector<std::unique_ptr<RemoteRegion>>;
  RemoteRegion* Add(std::unique_ptr<RemoteRegion> region) {
    RemoteRegion* raw = region.get();
    auto at = std::upper_bound(items_.begin(), items_.end(), raw->address,
                               [](uint64_t a, const std::unique_ptr<RemoteRegion>& r) { return a < r->address; });
    items_.insert(at, std::move(region));
    return raw;
  }
  std::unique_ptr<RemoteRegion> Take(const RemoteRegion* region) {
    for (auto it = items_.begin(); it != items_.end(); ++it) {
      if (it->get() != region) continue;
      std::unique_ptr<RemoteRegion> taken = std::move(*it);
      items_.erase(it);
      return taken;
    }
    return nullptr;
  }
  const Items& items() const { return items_; }
  Items::const_iterator begin() const { return items_.begin(); }
  Items::const_iterator end() const { return items_.end(); }
  RemoteRegion& operator[](size_t i) { return *items_[i]; }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }

 private:
  Items items_;
};

struct Peer {
  std::string name;
  // Who sent the metadata (identity.h); identity_known is false for a bare
  // NIXL blob from a non-kvxfer agent.
  ProcessIdentity identity;
  bool identity_known = false;
  // Empty and not known when the metadata is an opaque blob (NIXL's): then
  // the engine checks remote descriptors itself. Written by the engine
  // until the agent adopts the peer, then on the JS thread only.
  RemoteRegionList regions;
  bool regions_known = true;
  // How many of `regions` were revoked so far: a prepared transfer checks
  // its segments again when this moved. JS thread only.
  uint32_t revocations = 0;
  void* engine_conn = nullptr;
};

// What a peer's work fails with once its process is known to have exited
// (its pidfd, or a copy into it that found it gone).
inline Status PeerExited(const Peer& peer) {
  return Status::Error(Code::kPeerUnreachable,
                       "peer '" + peer.name + "' (pid " + std::to_string(peer.identity.pid) + ") exited");
}

struct Segment {
  uint64_t local;
  uint64_t remote;
  uint64_t length;
  uint32_t remote_device;
  const LocalRegion* local_region;
  const RemoteRegion* remote_region;  // null when the peer's regions are not known
};

// A validated transfer. Immutable while posted, so a prepared transfer can be
// posted again and again without any per-descriptor work on the JS thread.
struct Plan {
  XferOp op = XferOp::kWrite;
  Peer* peer = nullptr;
  MemKind remote_kind = MemKind::kDram;  // NIXL's lists are typed; UCX ignores it
  std::vector<Segment> segments;
  std::vector<uint8_t> notify;  // empty: no notification
  uint64_t bytes = 0;
  // What the engine keeps between posts (NIXL: the prepared request).
  // Written on the owner thread at the first post; when set, the plan is
  // handed back to the owner thread for ReleasePlan instead of being freed
  // on the JS thread.
  void* engine_state = nullptr;
};

struct EngineOptions {
  std::string engine = "ucx";  // "ucx" or "nixl"
  ProcessIdentity identity;    // this agent's, carried in its metadata
  std::string transports;      // UCX_TLS for this agent only; empty: environment
  std::string backend;         // NIXL: the backend plugin (default UCX)
  std::vector<std::pair<std::string, std::string>> backend_params;
  // A peer with work in flight and nothing finished for this long is
  // declared unreachable (liveness.h, StallWatch); 0: never.
  uint64_t peer_timeout_ms = 10000;
  // Tell the kvxfer peers this agent loaded of each region it registers
  // (they merge it: EngineEvents::MetadataPushed on their side).
  bool push_updates = true;
  // Move the whole pages of registered JS buffers into shared memory that
  // peers on this host map (shared_pages.h); UCX engine only.
  bool share_registered_memory = true;
};

// Newer metadata of a loaded peer, of the same incarnation, against what
// was loaded of it before.
struct PeerUpdate {
  std::vector<std::unique_ptr<RemoteRegion>> added;  // keys unpacked
  std::vector<wire::RegionFields> removed;
};

// What NIXL measured of one transfer.
struct Telemetry {
  uint64_t post_us = 0;
  uint64_t transfer_us = 0;
  uint64_t bytes = 0;
  uint64_t descriptors = 0;
};

struct CostEstimate {
  int64_t duration_us = 0;
  int64_t error_margin_us = 0;
  int method = 0;
};

class EngineEvents {
 public:
  virtual ~EngineEvents() = default;
  // A posted plan or a standalone notification finished.
  virtual void OperationDone(uint32_t token, Status status, uint64_t duration_ns,
                             const Telemetry* telemetry = nullptr) = 0;
  // `incarnation` is the sender's, where the engine carries it (0: not known).
  virtual void NotificationReceived(std::string peer, uint64_t incarnation, std::vector<uint8_t> message) = 0;
  // The peer `peer` (its incarnation `incarnation`) deregistered these
  // regions. Untrusted: the agent applies it to that peer's regions alone.
  virtual void RegionsRevoked(std::string peer, uint64_t incarnation, std::vector<wire::RegionFields> regions) = 0;
  virtual void PeerFailed(Peer* peer, Status status) = 0;
  // An operation with the peer failed in a way its death would explain.
  // True when the peer is now known dead: FailPeer has run for it, and the
  // operation should fail with the peer's failure. Call it from the engine's
  // methods, never from inside FailPeer.
  virtual bool ConfirmPeerFailure(Peer* peer) { return false; }
  // Whether the owner thread watches the peer's process (one host).
  virtual bool WatchesPeer(Peer* peer) { return false; }
  // DestroyPeer finished tearing the connection down.
  virtual void PeerDestroyed(Peer* peer) = 0;
  // The peer `peer` (its incarnation `incarnation`) sent its newer metadata
  // (it registered a region). Untrusted: it may only update that very peer.
  virtual void MetadataPushed(std::string peer, uint64_t incarnation, std::vector<uint8_t> blob) {}
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const char* name() const = 0;

  virtual Status Start(const std::string& agent_name, const EngineOptions& options) = 0;

  // Local metadata as peers load it, after Start and after every change of
  // the registered regions.
  virtual std::vector<uint8_t> Metadata() = 0;

  // Whether this engine, as loaded, can register memory of `kind` at all
  // (VRAM needs a UCX built with CUDA): ERR_ENGINE saying what is missing.
  virtual Status CanRegister(MemKind kind) { return Status::Ok(); }
  virtual Status Register(LocalRegion* region) = 0;
  // Allocates `region->length` bytes of host memory where peers reach it
  // fastest (UCX: a shared-memory segment a same-host peer maps and copies
  // into directly), registers it, and sets address and memory.
  virtual Status Allocate(LocalRegion* region) = 0;
  // Also tells the loaded peers (kvxfer agents) that the region is gone:
  // their RegionsRevoked.
  virtual void Deregister(LocalRegion* region) = 0;

  // Who an untrusted blob says it is, without connecting: its name and, when
  // it carries one, its identity. Fails where LoadPeer would fail to parse.
  virtual Status Describe(const uint8_t* blob, size_t length, std::string* name, ProcessIdentity* identity,
                          bool* identity_known) = 0;
  // Parses an untrusted blob, connects, and unpacks the peer's keys.
  virtual Status LoadPeer(const uint8_t* blob, size_t length, std::unique_ptr<Peer>* peer) = 0;
  // Merges newer metadata of the same incarnation into the loaded `peer`
  // in place, so that transfers prepared against it stay valid: unpacks
  // what it adds, lists what it drops. Sets `reload` (and returns Ok)
  // where the engine cannot merge it, e.g. the peer failed; the caller then
  // loads it as a new peer object.
  virtual Status UpdatePeer(Peer* peer, const uint8_t* blob, size_t length, PeerUpdate* update, bool* reload) {
    *reload = true;
    return Status::Ok();
  }
  // Revoked regions of `peer` no transfer uses any more: frees what the
  // engine made for them (their keys).
  virtual void DropRemoteRegions(Peer* peer, std::vector<std::unique_ptr<RemoteRegion>> regions) {}
  // The application forgot the peer (its connection may live on while
  // prepared transfers hold it): its name may be loaded for another agent.
  virtual void PeerForgotten(Peer* peer) {}
  // Starts closing the connection; PeerDestroyed reports the end. Called only
  // once no plan and no notification uses the peer.
  virtual void DestroyPeer(Peer* peer) = 0;
  // The peer is known dead (its process ended, or a new incarnation of it
  // was loaded): fail its in-flight work now, refuse new work, free what
  // the engine holds for it, and report PeerFailed. Idempotent.
  virtual void FailPeer(Peer* peer, Status why) = 0;

  virtual void Post(Plan& plan, uint32_t token) = 0;
  // The caller stopped waiting for `token`: abort it if the engine can (its
  // OperationDone still follows). UCX cannot take back a posted put.
  virtual void Cancel(uint32_t token) {}
  // The engine's own prediction of the plan's duration.
  virtual Status Estimate(Plan& plan, CostEstimate* out) {
    return Status::Error(Code::kEngine, std::string("the ") + name() + " engine cannot estimate transfer costs");
  }
  // Frees plan.engine_state; the plan is not in flight.
  virtual void ReleasePlan(Plan& plan) {}
  // `message` must stay valid until OperationDone(token).
  virtual void Notify(Peer* peer, const std::vector<uint8_t>& message, uint32_t token) = 0;

  // One round of progress; true when something happened.
  virtual bool Progress() = 0;
  // A file descriptor that becomes readable when Progress has work, valid
  // after Start, and Arm() to enable it: false when work is already pending.
  // An engine without one (-1) is polled every idle_poll_ms while idle.
  virtual int event_fd() const = 0;
  virtual bool Arm() = 0;
  virtual int idle_poll_ms() const { return -1; }

  // Fails everything in flight (their OperationDone fire), releases every
  // peer and region, and tears the engine down. Blocks for a bounded time.
  virtual void Shutdown() = 0;
};

// This agent's metadata `full` (what its engine's Metadata() made) narrowed
// to `regions`: a peer given it reaches only those. Pure, any thread; the
// regions are registered (their remote keys are set).
Status NarrowUcxMetadata(const std::vector<uint8_t>& full, const std::vector<const LocalRegion*>& regions,
                         std::vector<uint8_t>* out);
// The NIXL engine's: the envelope lists only `regions`, which is what kvxfer
// peers hold to; the NIXL blob inside it still describes every region
// (NIXL's partial blobs carry no connection details through its C API).
Status NarrowNixlMetadata(const std::vector<uint8_t>& full, const std::vector<const LocalRegion*>& regions,
                          std::vector<uint8_t>* out);

std::unique_ptr<Engine> CreateUcxEngine(EngineEvents* events);
// Null with `error` set when NIXL cannot be loaded.
std::unique_ptr<Engine> CreateNixlEngine(EngineEvents* events, Status* error);

struct NixlPlugin {
  std::string name;
  std::vector<std::string> memory_types;  // "DRAM", "VRAM", ... as NIXL lists them
  // Why it cannot take VRAM here, as NixlEngine::CanRegister says; empty when it can.
  std::string vram_refusal = "its memory types are unknown";
};
struct NixlInfo {
  bool available = false;
  std::string reason;  // why not, when not
  std::string path;    // the libnixl_capi.so that was loaded
  std::vector<NixlPlugin> plugins;
};
NixlInfo QueryNixl(bool with_plugins);

}  // namespace kvxfer
