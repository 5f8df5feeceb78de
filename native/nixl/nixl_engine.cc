// The engine over NIXL's C API. NIXL owns connections, remote keys and
// backends; kvxfer keeps its own threading (every NIXL call on the owner
// thread, NIXL's progress thread off) and its own promise and validation
// layer above.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <algorithm>

#include "crc32.h"
#include "engine.h"
#include "ucx/ucx_defaults.h"
#include "ucx/ucx_info.h"
#include "wire.h"
#include "nixl/nixl_api.h"
#include "nixl/nixl_envelope.h"

namespace kvxfer {

namespace {

std::vector<nixl::MemType> MemTypes(const nixl::Api& api, nixl::MemList list) {
  std::vector<nixl::MemType> out;
  size_t count = 0;
  if (list == nullptr || api.mem_list_size(list, &count) != nixl::kSuccess) return out;
  for (size_t i = 0; i < count; ++i) {
    nixl::MemType type;
    if (api.mem_list_get(list, i, &type) == nixl::kSuccess) out.push_back(type);
  }
  return out;
}

std::string MemTypeList(const std::vector<nixl::MemType>& types) {
  std::string out;
  for (nixl::MemType type : types) out += std::string(out.empty() ? "" : ", ") + nixl::MemTypeName(type);
  return out.empty() ? "none" : out;
}

// Why NIXL's `backend`, registering `types`, cannot take VRAM here; empty
// when it can. NIXL's UCX plugin lists VRAM whatever UCX it runs on, and the
// UCX in this process is the one it runs on (one libucp.so.0 per process).
std::string VramRefusal(const std::string& backend, const std::vector<nixl::MemType>& types) {
  if (std::find(types.begin(), types.end(), nixl::kVram) == types.end()) {
    return "NIXL's '" + backend + "' backend does not handle it (its memory types: " + MemTypeList(types) + ")";
  }
  if (backend == "UCX" && !QueryUcxCuda().supported) {
    return "NIXL's UCX backend runs on a UCX without CUDA: " + QueryUcxCuda().reason;
  }
  return "";
}


constexpr const char* kLocalAgent = "";  // NIXL_INIT_AGENT: "this agent's own descriptors"
constexpr int kIdlePollMs = 1;

uint64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

nixl::MemType ToNixl(MemKind kind) {
  switch (kind) {
    case MemKind::kVram: return nixl::kVram;
    case MemKind::kFile: return nixl::kFile;
    default: return nixl::kDram;
  }
}

Status NixlError(Code code, const std::string& what, nixl::Status status) {
  return Status::Engine(code, what + " failed (" + nixl::StatusName(status) + ")",
                        nixl::StatusName(status), static_cast<int>(status));
}

// Host memory from allocate(): NIXL registers memory but does not allocate it.
struct MappedMemory {
  MappedMemory(void* b, size_t l) : base(b), length(l) {}
  MappedMemory(const MappedMemory&) = delete;
  MappedMemory& operator=(const MappedMemory&) = delete;
  ~MappedMemory() { munmap(base, length); }
  void* const base;
  const size_t length;
};

// What a prepared transfer keeps between posts: both sides prepared once
// (prepXferDlist) and the request made once (makeXferReq), reposted as is.
struct PlanState {
  nixl::XferDlist local_list = nullptr;
  nixl::XferDlist remote_list = nullptr;
  nixl::XferDlistHandle local = nullptr;
  nixl::XferDlistHandle remote = nullptr;
  nixl::XferReq request = nullptr;
};

struct InFlight {
  PlanState* state;
  uint32_t token;
  uint64_t start_ns;
  Peer* peer;
};

// A failed operation held back until its peer's death explains it, or
// until deadline_ns (ReportFailure).
struct Suspect {
  uint32_t token;
  Peer* peer;
  uint64_t start_ns;
  uint64_t deadline_ns;
  Status failure;
};
constexpr uint64_t kSuspectNs = 200'000'000;

// Starts a NIXL notification that carries a revocation (wire.h) between
// kvxfer agents rather than an application's message: 16 fixed bytes no
// text starts with.
constexpr uint8_t kRevocationMarker[16] = {0x00, 0xff, 'k', 'v', 'x', 'f', 'e', 'r', '-', 'r', 'e', 'v', 'o', 'k', 'e', 0x00};

// Starts a NIXL notification that carries a kvxfer peer's newer metadata
// (it registered a region): its envelope follows.
constexpr uint8_t kMetadataMarker[16] = {0x00, 0xff, 'k', 'v', 'x', 'f', 'e', 'r', '-', 'u', 'p', 'd', 'a', 't', 'e', 0x00};

bool SameRegion(const wire::RegionFields& a, const wire::RegionFields& b) {
  return a.address == b.address && a.length == b.length && a.kind == b.kind && a.device == b.device;
}

wire::RegionFields FieldsOf(const RemoteRegion& r) {
  return {r.address, r.length, static_cast<uint8_t>(r.kind), r.device};
}

// The agent name at the start of a NIXL blob (nixlSerDes: "nixlSerDes|",
// then the tag "Agent", a native size_t length and the name), read without
// NIXL: a name NIXL already holds must be invalidated before newer metadata
// under it loads. False when the blob does not start that way.
bool PeekNixlAgentName(const uint8_t* raw, size_t length, std::string* name) {
  static constexpr char kHeader[] = "nixlSerDes|Agent";
  constexpr size_t kHeaderBytes = sizeof kHeader - 1;
  if (length < kHeaderBytes + sizeof(size_t) || std::memcmp(raw, kHeader, kHeaderBytes) != 0) return false;
  size_t name_length;
  std::memcpy(&name_length, raw + kHeaderBytes, sizeof name_length);
  const size_t at = kHeaderBytes + sizeof name_length;
  if (name_length == 0 || name_length > limits::kMaxAgentNameBytes || name_length > length - at) return false;
  name->assign(reinterpret_cast<const char*>(raw + at), name_length);
  return true;
}

class NixlEngine final : public Engine {
 public:
  NixlEngine(EngineEvents* events, const nixl::Api* api) : events_(events), api_(*api) {}
  ~NixlEngine() override = default;

  const char* name() const override { return "nixl"; }

  Status Start(const std::string& agent_name, const EngineOptions& options) override {
    name_ = agent_name;
    identity_ = options.identity;
    push_updates_ = options.push_updates;
    // Progress happens in our owner thread's calls (status checks, notification
    // polls); NIXL's own progress and listener threads stay off.
    nixl::AgentConfig config{false, false, 0, nixl::kSyncNone, 1, 0, 0, true};
    nixl::Status st = api_.create_configured_agent(agent_name.c_str(), &config, &agent_);
    if (st != nixl::kSuccess) return NixlError(Code::kEngine, "creating the NIXL agent", st);
    const std::string backend = options.backend.empty() ? "UCX" : options.backend;
    nixl::MemList mems = nullptr;
    nixl::Params params = nullptr;
    st = api_.get_plugin_params(agent_, backend.c_str(), &mems, &params);
    if (st != nixl::kSuccess) {
      return Fail(NixlError(Code::kEngine,
                            "finding NIXL's '" + backend + "' backend plugin (is NIXL_PLUGIN_DIR right?)",
                            st));
    }
    // NIXL's UCX backend takes UCX settings as its engine_config parameter,
    // KEY=value pairs split at commas: kvxfer's defaults, `transports` as
    // TLS, then the application's own engine_config, which wins.
    std::string engine_config;
    if (backend == "UCX") {
      if (options.transports.find(',') != std::string::npos) {
        api_.destroy_mem_list(mems);
        api_.destroy_params(params);
        return Fail(Status::Error(Code::kInvalidArg,
                                  "on the NIXL engine `transports` names one UCX transport (NIXL splits its "
                                  "engine_config at commas); set UCX_TLS in the environment for a list"));
      }
      for (const auto& [key, value] : UcxDefaults(options.transports)) engine_config += key + "=" + value + ",";
      if (!options.transports.empty()) engine_config += "TLS=" + options.transports + ",";
    }
    for (const auto& [key, value] : options.backend_params) {
      if (key == "engine_config") {
        engine_config += value;
      } else {
        api_.params_add(params, key.c_str(), value.c_str());
      }
    }
    if (!engine_config.empty()) api_.params_add(params, "engine_config", engine_config.c_str());
    backend_name_ = backend;
    backend_memory_ = MemTypes(api_, mems);
    st = api_.create_backend(agent_, backend.c_str(), params, &backend_);
    api_.destroy_mem_list(mems);
    api_.destroy_params(params);
    if (st != nixl::kSuccess) {
      return Fail(NixlError(Code::kEngine, "creating NIXL's '" + backend + "' backend", st));
    }
    // FILE regions (KV offload to a storage tier) go through the POSIX
    // backend; without the plugin they are simply refused at registration.
    if (backend != "POSIX") CreateOptionalBackend("POSIX");
    st = api_.create_notif_map(&notifications_);
    if (st != nixl::kSuccess) return Fail(NixlError(Code::kEngine, "creating a notification map", st));
    return Status::Ok();
  }

  std::vector<uint8_t> Metadata() override {
    return NixlEnvelope(RawMetadata(), identity_, std::vector<const LocalRegion*>(regions_.begin(), regions_.end()));
  }

  Status CanRegister(MemKind kind) override {
    if (kind != MemKind::kVram) return Status::Ok();
    const std::string refusal = VramRefusal(backend_name_, backend_memory_);
    return refusal.empty() ? Status::Ok() : Status::Error(Code::kEngine, "cannot register VRAM: " + refusal);
  }

  Status Register(LocalRegion* region) override {
    nixl::Status st = WithRegList(region, api_.register_mem);
    if (st != nixl::kSuccess) {
      return NixlError(Code::kEngine, std::string("registering ") + MemKindName(region->kind) + " memory", st);
    }
    region->engine_handle = region;
    regions_.insert(region);
    PushMetadata();
    return Status::Ok();
  }

  Status Allocate(LocalRegion* region) override {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t mapped = (region->length + page - 1) / page * page;
    void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
      return Status::Error(Code::kEngine, "allocating " + std::to_string(region->length) +
                                              " bytes failed: " + std::strerror(errno));
    }
    auto memory = std::make_shared<MappedMemory>(base, mapped);
    region->address = reinterpret_cast<uint64_t>(base);
    Status s = Register(region);
    if (s.ok()) region->memory = std::move(memory);
    return s;
  }

  void Deregister(LocalRegion* region) override {
    if (regions_.erase(region) == 0) return;
    WithRegList(region, api_.deregister_mem);
    region->engine_handle = nullptr;
    if (!shutting_down_) Revoke(*region);
  }

  // Peers holding our old metadata could still write into the region: tell
  // the kvxfer peers we loaded (NIXL has no message of its own for it; a
  // notification with kvxfer's marker is one a kvxfer peer takes for itself).
  void Revoke(const LocalRegion& region) {
    std::vector<uint8_t> message(kRevocationMarker, kRevocationMarker + sizeof kRevocationMarker);
    const std::vector<uint8_t> revocation = wire::PackRevocation(
        identity_.incarnation,
        {wire::RegionFields{region.address, region.length, static_cast<uint8_t>(region.kind), region.device}});
    message.insert(message.end(), revocation.begin(), revocation.end());
    NotifyKvxferPeers(message);
  }

  // Tells the kvxfer peers we loaded of a new region: they merge our
  // metadata into the peer they hold (DeliverNotifications).
  void PushMetadata() {
    if (!push_updates_ || shutting_down_ || holder_.empty()) return;
    std::vector<uint8_t> message(kMetadataMarker, kMetadataMarker + sizeof kMetadataMarker);
    const std::vector<uint8_t> blob = Metadata();
    message.insert(message.end(), blob.begin(), blob.end());
    NotifyKvxferPeers(message);
  }

  void NotifyKvxferPeers(const std::vector<uint8_t>& message) {
    for (const auto& [name, peer] : holder_) {
      if (!peer->identity_known || failed_.count(peer) != 0) continue;
      api_.gen_notif(agent_, name.c_str(), message.data(), message.size(), nullptr);
    }
  }

  Status Describe(const uint8_t* blob, size_t length, std::string* name, ProcessIdentity* identity,
                  bool* identity_known) override {
    NixlUnwrapped unwrapped;
    Status s = UnwrapNixlMetadata(blob, length, &unwrapped);
    if (!s.ok()) return s;
    if (!PeekNixlAgentName(unwrapped.raw, unwrapped.raw_length, name)) {
      return Status::Error(Code::kBadMetadata, "loading peer metadata: not NIXL metadata");
    }
    *identity = unwrapped.identity;
    *identity_known = unwrapped.enveloped;
    return Status::Ok();
  }

  Status LoadPeer(const uint8_t* blob, size_t length, std::unique_ptr<Peer>* out) override {
    // Our own metadata names this agent as the peer of its local backends
    // (FILE through POSIX, a loopback copy): NIXL needs no remote entry.
    NixlUnwrapped unwrapped;
    Status s = UnwrapNixlMetadata(blob, length, &unwrapped);
    if (!s.ok()) return s;
    const uint8_t* raw = unwrapped.raw;
    const size_t raw_length = unwrapped.raw_length;
    const std::vector<uint8_t> own = RawMetadata();
    if (raw_length == own.size() && std::memcmp(raw, own.data(), raw_length) == 0) {
      auto self = std::make_unique<Peer>();
      self->name = name_;
      self->regions_known = false;
      self->engine_conn = this;
      *out = std::move(self);
      return Status::Ok();
    }
    // NIXL keeps one entry per name and refuses newer metadata with other
    // connection details (a restarted peer) under a name it holds; a peer
    // the owner thread failed (dead, or replaced by a new incarnation) or
    // the application forgot gives its entry up first. Metadata of the same
    // incarnation (new regions) loads over the entry it has.
    std::string peeked;
    if (PeekNixlAgentName(raw, raw_length, &peeked)) {
      auto held = holder_.find(peeked);
      if (held != holder_.end() && (failed_.count(held->second) != 0 || forgotten_.count(held->second) != 0)) {
        Invalidate(held);
      }
    }
    char* name = nullptr;
    nixl::Status st = api_.load_remote_md(agent_, raw, raw_length, &name);
    if (st != nixl::kSuccess && holder_.count(peeked) != 0 && !unwrapped.enveloped) {
      // A bare NIXL blob carries no incarnation, and NIXL refuses other
      // connection details under a name it holds: a restart, or a corrupted
      // blob. Only the caller can tell, so the live peer is left alone.
      return NixlError(Code::kBadMetadata,
                       "loading peer metadata: NIXL holds other metadata under '" + peeked +
                           "' (a restarted agent, or a corrupted blob); forgetPeer('" + peeked + "') first to replace it",
                       st);
    }
    if (st != nixl::kSuccess || name == nullptr) {
      return NixlError(Code::kBadMetadata, "loading peer metadata (not NIXL metadata, or corrupted)", st);
    }
    auto peer = std::make_unique<Peer>();
    peer->name = name;
    std::free(name);
    // A bare NIXL blob is opaque: then NIXL checks remote descriptors at the
    // first post.
    peer->regions_known = unwrapped.enveloped;
    std::vector<wire::RegionFields>& loaded = loaded_regions_[peer.get()];
    for (const RemoteRegion& r : unwrapped.regions) {
      loaded.push_back(FieldsOf(r));
      peer->regions.Add(std::make_unique<RemoteRegion>(r));
    }
    peer->identity = unwrapped.identity;
    peer->identity_known = unwrapped.enveloped;
    holder_[peer->name] = peer.get();
    *out = std::move(peer);
    return Status::Ok();
  }

  Status UpdatePeer(Peer* peer, const uint8_t* blob, size_t length, PeerUpdate* update, bool* reload) override {
    *reload = true;
    auto held = holder_.find(peer->name);
    auto loaded = loaded_regions_.find(peer);
    if (held == holder_.end() || held->second != peer || loaded == loaded_regions_.end() || !peer->identity_known ||
        failed_.count(peer) != 0 || forgotten_.count(peer) != 0) {
      return Status::Ok();
    }
    NixlUnwrapped unwrapped;
    Status s = UnwrapNixlMetadata(blob, length, &unwrapped);
    if (!s.ok()) return s;
    std::string name;
    if (!unwrapped.enveloped || !PeekNixlAgentName(unwrapped.raw, unwrapped.raw_length, &name) || name != peer->name) {
      return Status::Ok();
    }
    std::vector<wire::RegionFields> now;
    for (const RemoteRegion& r : unwrapped.regions) now.push_back(FieldsOf(r));
    std::vector<wire::RegionFields>& retired = retired_regions_[peer];
    for (const wire::RegionFields& was : loaded->second) {
      if (std::none_of(now.begin(), now.end(), [&](const wire::RegionFields& r) { return SameRegion(r, was); })) {
        update->removed.push_back(was);
        retired.push_back(was);
      }
    }
    for (const RemoteRegion& r : unwrapped.regions) {
      const wire::RegionFields fields = FieldsOf(r);
      auto same = [&](const wire::RegionFields& x) { return SameRegion(x, fields); };
      if (std::any_of(loaded->second.begin(), loaded->second.end(), same)) continue;
      // NIXL keeps a region it once loaded and refuses it again with a new
      // key (dropping the whole entry): only a fresh entry takes it.
      if (std::any_of(retired.begin(), retired.end(), same)) {
        update->removed.clear();
        forgotten_.insert(peer);  // the reload gives NIXL's entry up first
        return Status::Ok();
      }
      update->added.push_back(std::make_unique<RemoteRegion>(r));
    }
    *reload = false;
    loaded->second = std::move(now);
    if (update->added.empty()) return Status::Ok();
    char* loaded_name = nullptr;
    nixl::Status st = api_.load_remote_md(agent_, unwrapped.raw, unwrapped.raw_length, &loaded_name);
    std::free(loaded_name);
    if (st != nixl::kSuccess) {
      update->added.clear();
      update->removed.clear();
      // NIXL dropped its entry for the peer with the failed load.
      Status why = NixlError(Code::kBadMetadata, "NIXL refused newer metadata of peer '" + peer->name + "'", st);
      FailPeer(peer, why);
      return why;
    }
    return Status::Ok();
  }

  void PeerForgotten(Peer* peer) override { forgotten_.insert(peer); }

  void DestroyPeer(Peer* peer) override {
    failed_.erase(peer);
    forgotten_.erase(peer);
    loaded_regions_.erase(peer);
    retired_regions_.erase(peer);
    if (peer->engine_conn == this) {  // ourselves: nothing loaded in NIXL
      events_->PeerDestroyed(peer);
      return;
    }
    // Newer metadata under the same name replaces the old Peer object, and
    // NIXL keeps one entry per name: it goes with the object that holds it.
    auto held = holder_.find(peer->name);
    if (held != holder_.end() && held->second == peer) Invalidate(held);
    events_->PeerDestroyed(peer);
  }

  void FailPeer(Peer* peer, Status why) override {
    if (peer->engine_conn == this || !failed_.emplace(peer, why).second) return;
    events_->PeerFailed(peer, why);
    for (size_t i = 0; i < suspects_.size();) {
      if (suspects_[i].peer != peer) {
        ++i;
        continue;
      }
      const Suspect done = std::move(suspects_[i]);
      suspects_[i] = std::move(suspects_.back());
      suspects_.pop_back();
      events_->OperationDone(done.token, why, NowNs() - done.start_ns);
    }
    // Releasing an in-flight request is how NIXL aborts it.
    for (size_t i = 0; i < in_flight_.size();) {
      InFlight f = in_flight_[i];
      if (f.peer != peer) {
        ++i;
        continue;
      }
      in_flight_[i] = std::move(in_flight_.back());
      in_flight_.pop_back();
      DropRequest(f.state);
      events_->OperationDone(f.token, why, NowNs() - f.start_ns);
    }
  }

  void Post(Plan& plan, uint32_t token) override {
    const uint64_t start = NowNs();
    auto failed = failed_.find(plan.peer);
    if (failed != failed_.end()) {
      events_->OperationDone(token, failed->second, 0);
      return;
    }
    PlanState* state = nullptr;
    Status s = ReadyRequest(plan, &state);
    if (!s.ok()) {
      // NIXL refuses to prepare against a peer whose connection it lost.
      ReportFailure(token, plan.peer, std::move(s), start);
      return;
    }
    nixl::Status st = api_.post_xfer_req(agent_, state->request, nullptr);
    if (st == nixl::kSuccess) {
      Complete(token, state, Status::Ok(), NowNs() - start);
    } else if (st == nixl::kInProgress) {
      in_flight_.push_back(InFlight{state, token, start, plan.peer});
    } else {
      ReportFailure(token, plan.peer, TransferFailure(plan.peer->name, st), start);
    }
  }

  void ReleasePlan(Plan& plan) override {
    auto* state = static_cast<PlanState*>(plan.engine_state);
    if (state == nullptr) return;
    states_.erase(state);
    FreeState(state);
    plan.engine_state = nullptr;
  }

  void Notify(Peer* peer, const std::vector<uint8_t>& message, uint32_t token) override {
    auto failed = failed_.find(peer);
    if (failed != failed_.end()) {
      events_->OperationDone(token, failed->second, 0);
      return;
    }
    const uint64_t start = NowNs();
    nixl::Status st = api_.gen_notif(agent_, peer->name.c_str(), message.data(), message.size(), nullptr);
    if (st == nixl::kSuccess) {
      events_->OperationDone(token, Status::Ok(), 0);
    } else {
      ReportFailure(token, peer, TransferFailure(peer->name, st), start);
    }
  }

  bool Progress() override {
    bool progressed = false;
    for (size_t i = 0; i < in_flight_.size();) {
      InFlight& f = in_flight_[i];
      nixl::Status st = api_.get_xfer_status(agent_, f.state->request);
      if (st == nixl::kInProgress) {
        ++i;
        continue;
      }
      const uint32_t token = f.token;
      PlanState* state = f.state;
      Peer* peer = f.peer;
      const uint64_t duration = NowNs() - f.start_ns;
      in_flight_[i] = std::move(in_flight_.back());
      in_flight_.pop_back();
      // Out of in_flight_ first: a confirmed death fails the peer's other
      // requests, which reshuffles it.
      if (st == nixl::kSuccess) {
        Complete(token, state, Status::Ok(), duration);
      } else {
        ReportFailure(token, peer, TransferFailure(peer->name, st), NowNs() - duration);
      }
      progressed = true;
    }
    progressed = SettleSuspects() || progressed;
    if (api_.get_notifs(agent_, notifications_, nullptr) == nixl::kSuccess) {
      progressed = DeliverNotifications() || progressed;
    }
    return progressed;
  }

  // Releasing an in-flight request is how NIXL aborts it; the plan makes a
  // new request at its next post.
  void Cancel(uint32_t token) override {
    for (size_t i = 0; i < in_flight_.size(); ++i) {
      if (in_flight_[i].token != token) continue;
      PlanState* state = in_flight_[i].state;
      const uint64_t duration = NowNs() - in_flight_[i].start_ns;
      in_flight_[i] = std::move(in_flight_.back());
      in_flight_.pop_back();
      DropRequest(state);
      events_->OperationDone(token, Status::Error(Code::kAborted, "the transfer was aborted"), duration);
      return;
    }
  }

  Status Estimate(Plan& plan, CostEstimate* out) override {
    PlanState* state = nullptr;
    Status s = ReadyRequest(plan, &state);
    if (!s.ok()) return s;
    nixl::Status st = api_.estimate_xfer_cost(agent_, state->request, nullptr, &out->duration_us,
                                              &out->error_margin_us, &out->method);
    if (st != nixl::kSuccess) return NixlError(Code::kEngine, "estimating the transfer's cost", st);
    return Status::Ok();
  }

  int event_fd() const override { return -1; }
  bool Arm() override { return true; }
  int idle_poll_ms() const override { return kIdlePollMs; }

  void Shutdown() override {
    shutting_down_ = true;
    // Releasing an in-flight request aborts it in NIXL.
    for (InFlight& f : in_flight_) {
      events_->OperationDone(f.token,
                             Status::Error(Code::kClosed, "the agent was closed before the transfer finished"),
                             NowNs() - f.start_ns);
    }
    in_flight_.clear();
    for (Suspect& s : suspects_) events_->OperationDone(s.token, std::move(s.failure), NowNs() - s.start_ns);
    suspects_.clear();
    for (PlanState* state : states_) FreeState(state);
    states_.clear();
    for (LocalRegion* region : std::vector<LocalRegion*>(regions_.begin(), regions_.end())) Deregister(region);
    if (notifications_ != nullptr) api_.destroy_notif_map(notifications_);
    notifications_ = nullptr;
    Teardown();
  }

 private:
  Status Fail(Status status) {
    Teardown();
    return status;
  }

  std::vector<uint8_t> RawMetadata() {
    void* data = nullptr;
    size_t length = 0;
    if (api_.get_local_md(agent_, &data, &length) != nixl::kSuccess) return {};
    std::vector<uint8_t> blob(static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + length);
    std::free(data);
    return blob;
  }

  void Teardown() {
    for (nixl::Backend extra : extra_backends_) api_.destroy_backend(extra);
    extra_backends_.clear();
    if (backend_ != nullptr) api_.destroy_backend(backend_);
    backend_ = nullptr;
    if (agent_ != nullptr) api_.destroy_agent(agent_);
    agent_ = nullptr;
  }

  nixl::Status WithRegList(const LocalRegion* region, nixl::Status (*call)(nixl::Agent, nixl::RegDlist, nixl::OptArgs)) {
    nixl::RegDlist list = nullptr;
    nixl::Status st = api_.create_reg_dlist(ToNixl(region->kind), &list);
    if (st != nixl::kSuccess) return st;
    st = api_.reg_dlist_add_desc(list, region->address, region->length, region->device, nullptr, 0);
    if (st == nixl::kSuccess) st = call(agent_, list, nullptr);
    api_.destroy_reg_dlist(list);
    return st;
  }

  void CreateOptionalBackend(const char* plugin) {
    nixl::MemList mems = nullptr;
    nixl::Params params = nullptr;
    if (api_.get_plugin_params(agent_, plugin, &mems, &params) != nixl::kSuccess) return;
    nixl::Backend extra = nullptr;
    if (api_.create_backend(agent_, plugin, params, &extra) == nixl::kSuccess) extra_backends_.push_back(extra);
    api_.destroy_mem_list(mems);
    api_.destroy_params(params);
  }

  void Complete(uint32_t token, PlanState* state, Status status, uint64_t duration) {
    nixl::Telemetry t{};
    if (status.ok() && api_.get_xfer_telemetry(agent_, state->request, &t) == nixl::kSuccess) {
      Telemetry telemetry{t.post_duration_us, t.xfer_duration_us, t.total_bytes, t.desc_count};
      events_->OperationDone(token, std::move(status), duration, &telemetry);
      return;
    }
    events_->OperationDone(token, std::move(status), duration);
  }

  // The plan's prepared lists and a request ready to post. A plan NIXL
  // refused keeps no half-made state: posting it again fails the same way.
  Status ReadyRequest(Plan& plan, PlanState** out) {
    auto* state = static_cast<PlanState*>(plan.engine_state);
    if (state == nullptr) {
      Status s = PreparePlan(plan, out);
      if (!s.ok()) ReleasePlan(plan);
      return s;
    }
    if (state->request == nullptr) {
      Status s = MakeRequest(plan, state);
      if (!s.ok()) return s;
    }
    *out = state;
    return Status::Ok();
  }

  Status PreparePlan(Plan& plan, PlanState** out) {
    const MemKind kind = plan.segments.front().local_region->kind;
    for (const Segment& s : plan.segments) {
      if (s.local_region->kind != kind) {
        return Status::Error(Code::kInvalidArg,
                             "with the NIXL engine all local descriptors of a transfer must be of one memory kind");
      }
    }
    auto state = std::make_unique<PlanState>();
    PlanState* raw = state.get();
    states_.insert(raw);
    plan.engine_state = raw;  // from here ReleasePlan frees whatever was made
    state.release();
    nixl::Status st = api_.create_xfer_dlist(ToNixl(kind), &raw->local_list);
    if (st == nixl::kSuccess) st = api_.create_xfer_dlist(ToNixl(plan.remote_kind), &raw->remote_list);
    if (st != nixl::kSuccess) return NixlError(Code::kEngine, "creating descriptor lists", st);
    for (const Segment& s : plan.segments) {
      api_.xfer_dlist_add_desc(raw->local_list, s.local, s.length, s.local_region->device);
      api_.xfer_dlist_add_desc(raw->remote_list, s.remote, s.length, s.remote_device);
    }
    // NIXL's C API hands back a handle even when it fails, with its inner
    // pointer never set: releasing that one would free a garbage address.
    // It is dropped (a few bytes NIXL's C API gives no way to free).
    st = api_.prep_xfer_dlist(agent_, kLocalAgent, raw->local_list, &raw->local, nullptr);
    if (st != nixl::kSuccess) {
      raw->local = nullptr;
      return NixlError(Code::kNotRegistered, "preparing the local descriptors", st);
    }
    st = api_.prep_xfer_dlist(agent_, plan.peer->name.c_str(), raw->remote_list, &raw->remote, nullptr);
    if (st != nixl::kSuccess) {
      raw->remote = nullptr;
      return NixlError(Code::kNotRegistered,
                       "preparing the remote descriptors against the metadata of peer '" + plan.peer->name +
                           "' (each must lie inside one of its registered regions)",
                       st);
    }
    Status made = MakeRequest(plan, raw);
    if (!made.ok()) return made;
    *out = raw;
    return Status::Ok();
  }

  Status MakeRequest(Plan& plan, PlanState* raw) {
    std::vector<int> indices(plan.segments.size());
    for (size_t i = 0; i < indices.size(); ++i) indices[i] = static_cast<int>(i);
    // No backend named: NIXL picks the one both sides share (UCX between
    // agents, POSIX for a file).
    nixl::OptArgs args = nullptr;
    api_.create_opt_args(&args);
    if (!plan.notify.empty()) {
      api_.opt_args_set_has_notif(args, true);
      api_.opt_args_set_notif_msg(args, plan.notify.data(), plan.notify.size());
    }
    const nixl::Status st = api_.make_xfer_req(agent_, plan.op == XferOp::kWrite ? nixl::kWrite : nixl::kRead, raw->local,
                                          indices.data(), indices.size(), raw->remote, indices.data(), indices.size(),
                                          &raw->request, args);
    api_.destroy_opt_args(args);
    if (st != nixl::kSuccess) {
      raw->request = nullptr;
      return NixlError(Code::kEngine, "making the transfer request", st);
    }
    return Status::Ok();
  }

  // Releases the plan's request (aborting it if it is in flight); the plan
  // makes a new one at its next post.
  void DropRequest(PlanState* state) {
    if (state->request == nullptr) return;
    api_.release_xfer_req(agent_, state->request);
    api_.destroy_xfer_req(state->request);
    state->request = nullptr;
  }

  void FreeState(PlanState* state) {
    DropRequest(state);
    if (state->local != nullptr) api_.release_xfer_dlist_handle(agent_, state->local);
    if (state->remote != nullptr) api_.release_xfer_dlist_handle(agent_, state->remote);
    if (state->local_list != nullptr) api_.destroy_xfer_dlist(state->local_list);
    if (state->remote_list != nullptr) api_.destroy_xfer_dlist(state->remote_list);
    delete state;
  }

  // NIXL forgets the peer and closes its connections.
  void Invalidate(std::unordered_map<std::string, Peer*>::iterator held) {
    api_.invalidate_remote_md(agent_, held->first.c_str());
    holder_.erase(held);
  }

  // Reports an operation NIXL failed. NIXL folds a lost connection into its
  // other failures, and sees a killed peer's sockets close a moment before
  // the process is marked exited (while the kernel tears down its memory:
  // milliseconds on a loaded host). So a failure with a peer the owner
  // thread watches waits, up to kSuspectNs, for the death that explains it:
  // then it fails as the peer's other work does, with the peer's failure.
  void ReportFailure(uint32_t token, Peer* peer, Status failure, uint64_t start_ns) {
    // Not a refusal of the plan itself (mixed memory kinds and the like).
    const bool transfer_failure = failure.code != Code::kInvalidArg;
    if (!shutting_down_ && transfer_failure && failed_.count(peer) == 0 && events_->WatchesPeer(peer) &&
        !events_->ConfirmPeerFailure(peer)) {
      suspects_.push_back(Suspect{token, peer, start_ns, NowNs() + kSuspectNs, std::move(failure)});
      return;
    }
    auto failed = failed_.find(peer);
    events_->OperationDone(token, failed != failed_.end() ? failed->second : std::move(failure), NowNs() - start_ns);
  }

  bool SettleSuspects() {
    if (suspects_.empty()) return false;
    const uint64_t now = NowNs();
    bool settled = false;
    for (size_t i = 0; i < suspects_.size();) {
      if (now < suspects_[i].deadline_ns) {
        // A confirmed death runs FailPeer, which settles every suspect of
        // the peer (this one included) and reshuffles the list.
        if (events_->ConfirmPeerFailure(suspects_[i].peer)) {
          settled = true;
        } else {
          ++i;
        }
        continue;
      }
      Suspect done = std::move(suspects_[i]);
      suspects_[i] = std::move(suspects_.back());
      suspects_.pop_back();
      events_->OperationDone(done.token, std::move(done.failure), now - done.start_ns);
      settled = true;
    }
    return settled;
  }

  Status TransferFailure(const std::string& peer, nixl::Status st) const {
    if (shutting_down_) return Status::Error(Code::kClosed, "the agent was closed");
    // NIXL's C API folds every backend failure into one status; a transfer
    // that fails after it was accepted has almost always lost its peer.
    return NixlError(Code::kPeerUnreachable, "transfer with peer '" + peer + "'", st);
  }

  // A revocation: the regions are no longer listed for the peer, and come
  // back, if registered again, as new ones (UpdatePeer).
  void RetireRegions(const std::string& agent, uint64_t incarnation, const std::vector<wire::RegionFields>& regions) {
    auto held = holder_.find(agent);
    if (held == holder_.end() || held->second->identity.incarnation != incarnation) return;
    auto loaded = loaded_regions_.find(held->second);
    if (loaded == loaded_regions_.end()) return;
    std::vector<wire::RegionFields>& retired = retired_regions_[held->second];
    auto& list = loaded->second;
    for (const wire::RegionFields& gone : regions) {
      for (auto it = list.begin(); it != list.end(); ++it) {
        if (it->address != gone.address || it->length != gone.length || it->device != gone.device) continue;
        retired.push_back(*it);
        list.erase(it);
        break;
      }
    }
  }

  bool DeliverNotifications() {
    size_t agents = 0;
    api_.notif_map_size(notifications_, &agents);
    for (size_t i = 0; i < agents; ++i) {
      const char* agent = nullptr;
      size_t count = 0;
      if (api_.notif_map_get_agent_at(notifications_, i, &agent) != nixl::kSuccess) continue;
      api_.notif_map_get_notifs_size(notifications_, agent, &count);
      for (size_t n = 0; n < count; ++n) {
        const void* data = nullptr;
        size_t length = 0;
        if (api_.notif_map_get_notif(notifications_, agent, n, &data, &length) != nixl::kSuccess) continue;
        const auto* bytes = static_cast<const uint8_t*>(data);
        if (length > sizeof kMetadataMarker && std::memcmp(bytes, kMetadataMarker, sizeof kMetadataMarker) == 0) {
          NixlUnwrapped unwrapped;
          const uint8_t* blob = bytes + sizeof kMetadataMarker;
          const size_t blob_length = length - sizeof kMetadataMarker;
          if (UnwrapNixlMetadata(blob, blob_length, &unwrapped).ok() && unwrapped.enveloped) {
            events_->MetadataPushed(agent, unwrapped.identity.incarnation,
                                    std::vector<uint8_t>(blob, blob + blob_length));
          }
          continue;
        }
        uint64_t incarnation = 0;
        std::vector<wire::RegionFields> revoked;
        if (length > sizeof kRevocationMarker && std::memcmp(bytes, kRevocationMarker, sizeof kRevocationMarker) == 0 &&
            wire::ParseRevocation(bytes + sizeof kRevocationMarker, length - sizeof kRevocationMarker, &incarnation,
                                  &revoked)) {
          RetireRegions(agent, incarnation, revoked);
          events_->RegionsRevoked(agent, incarnation, std::move(revoked));
          continue;
        }
        events_->NotificationReceived(agent, 0, std::vector<uint8_t>(bytes, bytes + length));
      }
    }
    if (agents > 0) api_.notif_map_clear(notifications_);
    return agents > 0;
  }

  EngineEvents* const events_;
  const nixl::Api& api_;
  std::string name_;
  std::string backend_name_;
  std::vector<nixl::MemType> backend_memory_;  // what the backend registers, as NIXL lists it
  nixl::Agent agent_ = nullptr;
  nixl::Backend backend_ = nullptr;
  std::vector<nixl::Backend> extra_backends_;
  nixl::NotifMap notifications_ = nullptr;
  std::unordered_set<LocalRegion*> regions_;
  std::unordered_set<PlanState*> states_;
  // By name, the Peer object whose metadata NIXL holds (NIXL keeps one
  // entry per name; older objects of the name may live on in plans).
  std::unordered_map<std::string, Peer*> holder_;
  // Peers known dead (FailPeer), with what their work fails with.
  std::unordered_map<Peer*, Status> failed_;
  // Peers the application forgot that prepared transfers still hold.
  std::unordered_set<Peer*> forgotten_;
  ProcessIdentity identity_;
  std::vector<InFlight> in_flight_;
  std::vector<Suspect> suspects_;
  bool shutting_down_ = false;
  bool push_updates_ = true;
  // The regions each kvxfer peer's metadata listed when last loaded, and
  // those it dropped since (UpdatePeer).
  std::unordered_map<Peer*, std::vector<wire::RegionFields>> loaded_regions_;
  std::unordered_map<Peer*, std::vector<wire::RegionFields>> retired_regions_;
};

}  // namespace

NixlInfo QueryNixl(bool with_plugins) {
  NixlInfo info;
  const nixl::Api* api = nixl::Load(&info.reason);
  if (api == nullptr) return info;
  info.available = true;
  info.path = api->path;
  if (!with_plugins) return info;
  // Plugins are listed per agent; a short-lived one answers.
  nixl::AgentConfig config{false, false, 0, nixl::kSyncNone, 1, 0, 0, false};
  nixl::Agent agent = nullptr;
  if (api->create_configured_agent("kvxfer-info", &config, &agent) != nixl::kSuccess) return info;
  nixl::StringList plugins = nullptr;
  if (api->get_available_plugins(agent, &plugins) == nixl::kSuccess) {
    size_t count = 0;
    api->string_list_size(plugins, &count);
    for (size_t i = 0; i < count; ++i) {
      const char* plugin = nullptr;
      if (api->string_list_get(plugins, i, &plugin) != nixl::kSuccess) continue;
      NixlPlugin entry{plugin, {}};
      nixl::MemList mems = nullptr;
      nixl::Params params = nullptr;
      if (api->get_plugin_params(agent, plugin, &mems, &params) == nixl::kSuccess) {
        const std::vector<nixl::MemType> types = MemTypes(*api, mems);
        for (nixl::MemType type : types) entry.memory_types.emplace_back(nixl::MemTypeName(type));
        entry.vram_refusal = VramRefusal(entry.name, types);
        api->destroy_mem_list(mems);
        api->destroy_params(params);
      }
      info.plugins.push_back(std::move(entry));
    }
    api->destroy_string_list(plugins);
  }
  api->destroy_agent(agent);
  return info;
}

std::unique_ptr<Engine> CreateNixlEngine(EngineEvents* events, Status* error) {
  std::string why;
  const nixl::Api* api = nixl::Load(&why);
  if (api == nullptr) {
    *error = Status::Error(Code::kEngine, "the NIXL engine is unavailable: " + why);
    return nullptr;
  }
  return std::make_unique<NixlEngine>(events, api);
}

Status NarrowNixlMetadata(const std::vector<uint8_t>& full, const std::vector<const LocalRegion*>& regions,
                          std::vector<uint8_t>* out) {
  NixlUnwrapped unwrapped;
  Status s = UnwrapNixlMetadata(full.data(), full.size(), &unwrapped);
  if (!s.ok()) return s;
  *out = NixlEnvelope(std::vector<uint8_t>(unwrapped.raw, unwrapped.raw + unwrapped.raw_length), unwrapped.identity, regions);
  return Status::Ok();
}

}  // namespace kvxfer
