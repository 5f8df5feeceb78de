#include "ucx/ucx_engine.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "engine.h"
#include "host_memory.h"
#include "process_copy.h"
#include "shared_pages.h"
#include "ucx/ucx_control.h"
#include "ucx/ucx_defaults.h"
#include "ucx/ucx_info.h"
#include "ucx/ucx_metadata.h"

#include <ucs/config/global_opts.h>
#include <uct/api/uct.h>

namespace kvxfer {

namespace {

constexpr auto kShutdownDeadline = std::chrono::seconds(5);
constexpr auto kQuietBeforeDestroy = std::chrono::milliseconds(100);
constexpr auto kReceivesSettleDeadline = std::chrono::milliseconds(500);
constexpr uint64_t kCloseDeferredLimitNs = 2000000000;
constexpr int kCloseDeferredPollMs = 100;

// From this many bytes, a direct copy of several descriptors bypasses the
// cache: without reading each destination line first, thousands of 32 KiB
// descriptors move at the speed of one large memcpy, instead of about 1.5
// times slower. One descriptor is left to memcpy, which glibc makes
// non-temporal itself when it is large and keeps cached when it is not (a
// cached 1-4 MiB request is faster: 0.94 of ucx_perftest against 0.72
// streamed).
constexpr uint64_t kStreamingCopyBytes = 1 << 20;

#if defined(__x86_64__)
void CopyStreaming(uint8_t* to, const uint8_t* from, size_t n) {
  const size_t head = std::min(n, (16 - (reinterpret_cast<uintptr_t>(to) & 15)) & 15);
  std::memcpy(to, from, head);
  to += head;
  from += head;
  n -= head;
  auto* out = reinterpret_cast<__m128i*>(to);
  auto* in = reinterpret_cast<const __m128i*>(from);
  for (size_t lines = n / 64; lines > 0; --lines, out += 4, in += 4) {
    const __m128i a = _mm_loadu_si128(in), b = _mm_loadu_si128(in + 1);
    const __m128i c = _mm_loadu_si128(in + 2), d = _mm_loadu_si128(in + 3);
    _mm_stream_si128(out, a);
    _mm_stream_si128(out + 1, b);
    _mm_stream_si128(out + 2, c);
    _mm_stream_si128(out + 3, d);
  }
  std::memcpy(out, in, n % 64);
}
void StoreFence() { _mm_sfence(); }
#else
void CopyStreaming(uint8_t* to, const uint8_t* from, size_t n) { std::memcpy(to, from, n); }
void StoreFence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
#endif

enum class Mapping { kCovers, kDoesNotCover, kUnknown };

// Whether [start, start + length) lies inside a single shared mapping of
// this process (/proc/self/maps; read once per peer region loaded).
Mapping SharedMappingOf(uintptr_t start, uint64_t length) {
  if (length == 0 || start + length < start) return Mapping::kDoesNotCover;
  bool covered = false;
  const bool read = ForEachMapping([&](const MappedRange& m) {
    if (start < m.from || start >= m.to) return true;
    covered = start + length <= m.to && m.perms[3] == 's';
    return false;
  });
  if (!read) return Mapping::kUnknown;
  return covered ? Mapping::kCovers : Mapping::kDoesNotCover;
}

constexpr size_t kMaxPrefaultThreads = 4;
constexpr size_t kMaxPrefaultsQueued = 64;

// Faults mappings' pages into this process's page tables in the background,
// so that the first transfers into a fresh pool, or from a peer's pool just
// loaded, do not pay a page fault per 4 KiB page (about 3 us each here: a
// first 2 MiB READ took 6.5 ms, later ones 0.3 ms). Contents are untouched.
// Harmless if a range is unmapped meanwhile (madvise fails), and a no-op on
// kernels before 5.14 (no MADV_POPULATE_WRITE).
//
// A few threads for the whole process, started as they are first needed and
// kept: an application that loads many peers at once must not start a
// thread per region, nor one that loads and forgets peers all day a thread
// per load (each leaves its stack in glibc's cache, and costs the start).
// Past kMaxPrefaultsQueued waiting, a region is left to fault in on use.
class Prefaulter {
 public:
  static Prefaulter& Instance() {
    // Never destroyed: its threads live as long as the process.
    static Prefaulter* instance = new Prefaulter;
    return *instance;
  }

  void Enqueue(uintptr_t from, uintptr_t to) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.size() >= kMaxPrefaultsQueued) return;
    queue_.push_back({from, to});
    if (idle_ == 0 && threads_ < kMaxPrefaultThreads) {
      try {
        std::thread([this] { Work(); }).detach();
        ++threads_;
        ++idle_;
      } catch (const std::system_error&) {
        // No thread: a running one takes it, or the pages fault in on use.
      }
    }
    ready_.notify_one();
  }

 private:
  struct Range {
    uintptr_t from;
    uintptr_t to;
  };

  void Work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ready_.wait(lock, [this] { return !queue_.empty(); });
      const Range range = queue_.front();
      queue_.pop_front();
      --idle_;
      lock.unlock();
#ifdef MADV_POPULATE_WRITE
      madvise(reinterpret_cast<void*>(range.from), range.to - range.from, MADV_POPULATE_WRITE);
#endif
      lock.lock();
      ++idle_;
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Range> queue_;
  size_t threads_ = 0;
  size_t idle_ = 0;
};

void PrefaultInBackground(const void* start, uint64_t length) {
#ifdef MADV_POPULATE_WRITE
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t from = reinterpret_cast<uintptr_t>(start) & ~(page - 1);
  const uintptr_t to = reinterpret_cast<uintptr_t>(start) + length;
  Prefaulter::Instance().Enqueue(from, to);
#else
  (void)start;
  (void)length;
#endif
}

// allocate() promises zero-filled memory. UCX allocates it from a fresh
// shared-memory segment where a transport maps one (zero already), and
// otherwise from the heap (its thp and heap methods: posix_memalign,
// malloc), which may hand back memory used before (ASan's allocator fills
// it on purpose: the sanitizer run found it over tcp). Whole pages of such
// private memory are given back to the kernel (MADV_DONTNEED: they read as
// zero, and cost nothing until touched); the partial pages at either end
// are cleared.
void ZeroUnlessFresh(void* start, uint64_t length) {
  const auto from = reinterpret_cast<uintptr_t>(start);
  if (SharedMappingOf(from, length) == Mapping::kCovers) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t to = from + length;
  const uintptr_t inner_from = (from + page - 1) & ~(page - 1);
  const uintptr_t inner_to = to & ~(page - 1);
  if (inner_from >= inner_to ||
      madvise(reinterpret_cast<void*>(inner_from), inner_to - inner_from, MADV_DONTNEED) != 0) {
    std::memset(start, 0, length);
    return;
  }
  std::memset(start, 0, inner_from - from);
  std::memset(reinterpret_cast<void*>(inner_to), 0, to - inner_to);
}

uint64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// What a transfer ends with when its peer went away. UCS_ERR_CANCELED is
// among them: the engine never cancels a transfer itself (closing and
// forgetting report theirs first), but UCX 1.22 discards the requests
// pending on a failed lane with it (ucp_discard_lane_ff), and they can
// complete before the endpoint's error callback has run.
bool IsPeerFailure(ucs_status_t s) {
  switch (s) {
    case UCS_ERR_CANCELED:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_IO_ERROR:
      return true;
    default:
      return false;
  }
}

class UcxEngine;

// The UCP context outlives the engine while memory it allocated is still
// referenced by a Buffer view.
struct UcxContext {
  explicit UcxContext(ucp_context_h h) : handle(h) {}
  UcxContext(const UcxContext&) = delete;
  UcxContext& operator=(const UcxContext&) = delete;
  ~UcxContext() { ucp_cleanup(handle); }
  const ucp_context_h handle;
};

struct UcxAllocation {
  UcxAllocation(std::shared_ptr<UcxContext> c, ucp_mem_h m) : context(std::move(c)), memh(m) {}
  UcxAllocation(const UcxAllocation&) = delete;
  UcxAllocation& operator=(const UcxAllocation&) = delete;
  ~UcxAllocation() { ucp_mem_unmap(context->handle, memh); }
  const std::shared_ptr<UcxContext> context;
  const ucp_mem_h memh;
};

struct UcxOp;

// A loaded peer's endpoint. Lives until the agent destroys the peer (or the
// engine shuts down), even when its endpoint was closed early because the
// peer failed: the agent's plans still point at it.
struct UcxConn {
  enum class Endpoint : uint8_t { kOpen, kClosing, kClosed };
  UcxEngine* engine = nullptr;
  Peer* peer = nullptr;
  ucp_ep_h ep = nullptr;
  Endpoint endpoint = Endpoint::kOpen;
  ucs_status_t failure = UCS_OK;
  Status failure_status;       // what its operations fail with, once failed
  bool destroy_requested = false;
  bool report_destroyed = true;
  UcxOp* ops = nullptr;        // operations not yet reported, newest first
  // What its metadata said, to tell newer metadata's changes (UpdatePeer).
  std::vector<uint8_t> worker_address;
  struct KnownRegion {
    wire::RegionFields fields;
    std::vector<uint8_t> key;  // packed
    SharedPagesInfo shared;
    bool operator==(const KnownRegion& o) const {
      return fields.address == o.fields.address && fields.length == o.fields.length && fields.kind == o.fields.kind &&
             fields.device == o.fields.device && key == o.key && shared == o.shared;
    }
  };
  std::vector<KnownRegion> known;
  // Every key unpacked for the peer and not yet dropped, with the peer's
  // shared pages mapped for its region: they go when the endpoint closes.
  struct Key {
    ucp_rkey_h rkey;
    PeerPages pages;
  };
  std::vector<Key> keys;
  // The peer's process, where this agent copies into and out of its memory
  // itself (ProcessCopy); 0 where it cannot (CrossMemoryPid), or once the
  // kernel refused it.
  pid_t cma_pid = 0;
  // UCX requests on the endpoint not yet called back (flushes, active
  // messages): a failed endpoint closes once they are (CloseEndpoint).
  uint32_t requests = 0;
  bool close_deferred = false;
  uint64_t close_deferred_ns = 0;
  // Forgotten while UCX still had requests of it (UcxEngine::orphans_).
  bool orphaned = false;
  // The endpoint's close, until UCX calls it back (OnEndpointClosed) or
  // Teardown releases it to UCX.
  void* close_request = nullptr;
};

// A control message whose frame the send owns until it completes.
struct UcxOwnedSend {
  UcxConn* conn;
  std::shared_ptr<const std::vector<uint8_t>> frame;
};

// A control message being received, from UCX's probe to its callback.
struct UcxControlRecv {
  UcxEngine* engine;
  ControlKind kind;
  std::vector<uint8_t> bytes;
  void* request = nullptr;
  // UCX 1.13 completes a message whose fragments have all arrived inside
  // ucp_tag_msg_recv_nbx, calling back first and returning the request
  // after: the callback then only records the outcome.
  bool posted = false;
  bool done = false;
  ucs_status_t status = UCS_OK;
};

// One posted plan or standalone notification, from post to its UCX
// callbacks. Reported to the agent once: when it finishes, or earlier when
// its peer fails (UCX may complete a request on a failed endpoint late, or,
// seen with keepalive, never).
struct UcxOp {
  UcxEngine* engine;
  UcxConn* conn;
  uint32_t token;
  uint64_t start_ns;
  const std::vector<uint8_t>* message;  // sent after the data; may be null
  std::vector<uint8_t> frame;           // the message's control frame, while it is sent
  ucs_status_t status = UCS_OK;         // the first failure
  bool reported = false;
  UcxOp* prev = nullptr;  // in conn->ops while not reported
  UcxOp* next = nullptr;
};

class UcxEngine final : public Engine {
 public:
  explicit UcxEngine(EngineEvents* events) : events_(events) {}
  ~UcxEngine() override {
    for (UcxOp* op : spare_ops_) delete op;
  }

  const char* name() const override { return "ucx"; }

  Status Start(const std::string& agent_name, const EngineOptions& options) override {
    name_ = agent_name;
    identity_ = options.identity;
    push_updates_ = options.push_updates;
    const char* direct = std::getenv("KVXFER_UCX_DIRECT_COPY");
    direct_copy_ = direct == nullptr || std::strcmp(direct, "0") != 0;
    const char* prefault = std::getenv("KVXFER_UCX_PREFAULT");
    prefault_ = prefault == nullptr || std::strcmp(prefault, "0") != 0;
    cma_ = direct_copy_ && CopiesAcrossProcesses(options.transports);
    control_header_ = PackControlHeader(identity_.incarnation, name_);
    ucp_config_t* config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
    if (st != UCS_OK) return UcsError(Code::kEngine, "reading the UCX configuration", st);
    if (!options.transports.empty()) {
      st = ucp_config_modify(config, "TLS", options.transports.c_str());
      if (st != UCS_OK) {
        ucp_config_release(config);
        return UcsError(Code::kInvalidArg, "transports '" + options.transports + "'", st);
      }
    }
    // With one RMA lane UCX picks the shared-memory channel, which can only
    // emulate a put into memory it did not allocate (the peer's CPU copies);
    // a second lane lets newer UCX add cma, a zero-copy put by the kernel
    // (0.4 -> 7 GB/s at 4 MiB with UCX 1.22). NIXL does the same.
    unsigned major = 0, minor = 0, release = 0;
    ucp_get_version(&major, &minor, &release);
    const bool has_rma_rails = major > 1 || (major == 1 && minor >= 14);  // 1.13 has no such key
    if (has_rma_rails && std::getenv("UCX_MAX_RMA_RAILS") == nullptr) {
      ucp_config_modify(config, "MAX_RMA_RAILS", "2");
    }
    // Transport settings reach UCX's transports through the context's
    // configuration (applied when each transport reads its own).
    for (const auto& [key, value] : UcxDefaults(options.transports)) {
      ucp_config_modify(config, key.c_str(), value.c_str());
    }
    // Control messages go eagerly at any length (ucx_control.h): a
    // rendezvous would make the peer's worker create an endpoint for this
    // one that it keeps. Transfers are puts and gets, which this leaves as
    // they are.
    if (std::getenv("UCX_RNDV_THRESH") == nullptr) ucp_config_modify(config, "RNDV_THRESH", "inf");
    ucp_params_t params{};
    params.field_mask =
        UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
    params.name = name_.c_str();
    // The worker is used by the owner thread alone, but the last Buffer view
    // of allocated memory may unmap it from the JS thread (see UcxAllocation).
    params.mt_workers_shared = 1;
    st = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    if (st != UCS_OK) return UcsError(Code::kEngine, "ucp_init", st);
    context_holder_ = std::make_shared<UcxContext>(context_);
    ucp_context_attr_t context_attr{};
    context_attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    cuda_memory_ = ucp_context_query(context_, &context_attr) == UCS_OK &&
                   (context_attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    transports_ = options.transports;

    ucp_worker_params_t worker_params{};
    worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;
    st = ucp_worker_create(context_, &worker_params, &worker_);
    if (st != UCS_OK) return Fail(UcsError(Code::kEngine, "ucp_worker_create", st));
    st = ucp_worker_get_efd(worker_, &event_fd_);
    if (st != UCS_OK) return Fail(UcsError(Code::kEngine, "ucp_worker_get_efd", st));

    ucp_address_t* address = nullptr;
    size_t address_length = 0;
    st = ucp_worker_get_address(worker_, &address, &address_length);
    if (st != UCS_OK) return Fail(UcsError(Code::kEngine, "ucp_worker_get_address", st));
    const auto* bytes = reinterpret_cast<const uint8_t*>(address);
    worker_address_.assign(bytes, bytes + address_length);
    ucp_worker_release_address(worker_, address);

    return Status::Ok();
  }

  Status CanRegister(MemKind kind) override {
    if (kind != MemKind::kVram || cuda_memory_) return Status::Ok();
    const UcxCudaSupport& cuda = QueryUcxCuda();
    if (!cuda.supported) return Status::Error(Code::kEngine, "cannot register VRAM: " + cuda.reason);
    const char* tls = std::getenv("UCX_TLS");
    return Status::Error(Code::kEngine, "cannot register VRAM: UCX has CUDA support, but this agent's transports (" +
                                            (transports_.empty() ? std::string("UCX_TLS=") + (tls ? tls : "")
                                                                 : "transports: '" + transports_ + "'") +
                                            ") include none that moves CUDA memory; add cuda_copy (and cuda_ipc, "
                                            "gdr_copy where present)");
  }

  Status Register(LocalRegion* region) override {
    if (region->kind == MemKind::kFile) {
      return Status::Error(Code::kInvalidArg, "FILE regions need the NIXL engine (its POSIX backend)");
    }
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = reinterpret_cast<void*>(region->address);
    params.length = region->length;
    params.memory_type =
        region->kind == MemKind::kVram ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
    ucp_mem_h memh = nullptr;
    ucs_status_t st = ucp_mem_map(context_, &params, &memh);
    if (st != UCS_OK) {
      return UcsError(Code::kEngine,
                      std::string("registering ") + MemKindName(region->kind) + " memory", st);
    }
    Status packed = PackKey(memh, region);
    if (!packed.ok()) {
      ucp_mem_unmap(context_, memh);
      return packed;
    }
    region->engine_handle = memh;
    regions_.insert(region);
    PushMetadata();
    return Status::Ok();
  }

  Status Allocate(LocalRegion* region) override {
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_FLAGS | UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = nullptr;
    params.length = region->length;
    params.flags = UCP_MEM_MAP_ALLOCATE;
    params.memory_type = UCS_MEMORY_TYPE_HOST;
    ucp_mem_h memh = nullptr;
    ucs_status_t st = ucp_mem_map(context_, &params, &memh);
    if (st != UCS_OK) {
      return UcsError(Code::kEngine, "allocating " + std::to_string(region->length) + " bytes", st);
    }
    auto allocation = std::make_shared<UcxAllocation>(context_holder_, memh);
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    st = ucp_mem_query(memh, &attr);
    if (st != UCS_OK) return UcsError(Code::kEngine, "querying allocated memory", st);
    if (attr.length < region->length) {
      return Status::Error(Code::kEngine, "UCX allocated less memory than asked for");
    }
    Status packed = PackKey(memh, region);
    if (!packed.ok()) return packed;
    region->address = reinterpret_cast<uint64_t>(attr.address);
    ZeroUnlessFresh(attr.address, region->length);
    if (prefault_) PrefaultInBackground(attr.address, region->length);
    region->engine_handle = memh;
    region->memory = std::move(allocation);
    regions_.insert(region);
    PushMetadata();
    return Status::Ok();
  }

  void Deregister(LocalRegion* region) override {
    if (regions_.erase(region) == 0) return;
    // Allocated memory is unmapped by its last holder, not here.
    if (!region->memory) ucp_mem_unmap(context_, static_cast<ucp_mem_h>(region->engine_handle));
    region->engine_handle = nullptr;
    // A peer holding our old metadata could still write there (by cma, into
    // a registered Buffer that lives on): tell the peers we reach.
    if (!shutting_down_) Revoke(*region);
  }

  std::vector<uint8_t> Metadata() override {
    std::vector<const LocalRegion*> regions(regions_.begin(), regions_.end());
    return PackUcxMetadata(name_, identity_, worker_address_, regions);
  }

  Status Describe(const uint8_t* blob, size_t length, std::string* name, ProcessIdentity* identity,
                  bool* identity_known) override {
    UcxMetadata md;
    Status s = ParseUcxMetadata(blob, length, &md);
    if (!s.ok()) return s;
    *name = md.name;
    *identity = md.identity;
    *identity_known = true;
    return Status::Ok();
  }

  Status LoadPeer(const uint8_t* blob, size_t length, std::unique_ptr<Peer>* out) override {
    UcxMetadata md;
    Status s = ParseUcxMetadata(blob, length, &md);
    if (!s.ok()) return s;

    auto peer = std::make_unique<Peer>();
    peer->name = md.name;
    peer->identity = md.identity;
    peer->identity_known = true;
    auto* conn = new UcxConn;
    conn->engine = this;
    conn->peer = peer.get();
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(md.worker_address);
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = &UcxEngine::OnEndpointError;
    params.err_handler.arg = conn;
    ucs_status_t st = ucp_ep_create(worker_, &params, &conn->ep);
    if (st != UCS_OK) {
      delete conn;
      if (st == UCS_ERR_UNREACHABLE) {
        return UcsError(Code::kPeerUnreachable,
                        "no transport reaches peer '" + md.name +
                            "' (do both agents allow a common transport in UCX_TLS?)",
                        st);
      }
      return UcsError(Code::kBadMetadata, "connecting to peer '" + md.name + "'", st);
    }
    conns_.insert(conn);
    peer->engine_conn = conn;
    conn->cma_pid = CrossMemoryPid(md.identity);
    conn->worker_address.assign(md.worker_address, md.worker_address + md.worker_address_length);
    PeerUpdate update;
    s = UnpackRegions(conn, md, &update);
    if (!s.ok()) {
      // The peer object dies with this call: the endpoint closes on its own.
      conn->peer = nullptr;
      conn->report_destroyed = false;
      Destroy(conn);
      return s;
    }
    for (std::unique_ptr<RemoteRegion>& region : update.added) peer->regions.Add(std::move(region));
    *out = std::move(peer);
    return Status::Ok();
  }

  Status UpdatePeer(Peer* peer, const uint8_t* blob, size_t length, PeerUpdate* update, bool* reload) override {
    auto* conn = static_cast<UcxConn*>(peer->engine_conn);
    UcxMetadata md;
    Status s = ParseUcxMetadata(blob, length, &md);
    if (!s.ok()) return s;
    // Another worker (a recreated one) cannot be reached on this endpoint.
    *reload = conn == nullptr || conn->failure != UCS_OK || conn->endpoint != UcxConn::Endpoint::kOpen ||
              conn->worker_address.size() != md.worker_address_length ||
              std::memcmp(conn->worker_address.data(), md.worker_address, md.worker_address_length) != 0;
    if (*reload) return Status::Ok();
    return UnpackRegions(conn, md, update);
  }

  void DropRemoteRegions(Peer* peer, std::vector<std::unique_ptr<RemoteRegion>> regions) override {
    auto* conn = static_cast<UcxConn*>(peer->engine_conn);
    if (conn == nullptr) return;
    for (const std::unique_ptr<RemoteRegion>& region : regions) {
      auto key = FindKey(conn, static_cast<ucp_rkey_h>(region->engine_key));
      if (key == conn->keys.end()) continue;  // gone with the endpoint
      ucp_rkey_destroy(key->rkey);
      conn->keys.erase(key);
    }
  }

  void DestroyPeer(Peer* peer) override { Destroy(static_cast<UcxConn*>(peer->engine_conn)); }

  void FailPeer(Peer* peer, Status why) override {
    auto* conn = static_cast<UcxConn*>(peer->engine_conn);
    if (conn != nullptr) FailConn(conn, UCS_ERR_CONNECTION_RESET, std::move(why));
  }


  void Post(Plan& plan, uint32_t token) override {
    auto* conn = static_cast<UcxConn*>(plan.peer->engine_conn);
    UcxOp* op = NewOp(conn, token, plan.notify.empty() ? nullptr : &plan.notify);
    if (conn->failure != UCS_OK) {
      op->status = conn->failure;
      Finish(op);
      return;
    }
    // The memory type is known from the region: naming it spares UCX its
    // own detection on every descriptor.
    ucp_request_param_t host{};
    host.op_attr_mask = UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    host.memory_type = UCS_MEMORY_TYPE_HOST;
    ucp_request_param_t cuda{};
    cuda.op_attr_mask = UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    cuda.memory_type = UCS_MEMORY_TYPE_CUDA;
    const bool write = plan.op == XferOp::kWrite;
    if (CopyDirectly(plan, write, op)) return;
    // No callbacks per descriptor: requests that do not complete at once are
    // freed right away (UCX finishes them anyway) and the flush below
    // completes when every one of them has reached the peer.
    for (const Segment& s : plan.segments) {
      // UCX may run the endpoint's error handler from inside a put (seen
      // over tcp with the peer just killed: 1 round in about 45), which
      // fails the connection and closes the endpoint under this loop.
      if (conn->failure != UCS_OK) break;
      const ucp_request_param_t* param =
          s.local_region->kind == MemKind::kVram ? &cuda : &host;
      auto rkey = static_cast<ucp_rkey_h>(s.remote_region->engine_key);
      void* local = reinterpret_cast<void*>(s.local);
      ucs_status_ptr_t request =
          write ? ucp_put_nbx(conn->ep, local, s.length, s.remote, rkey, param)
                : ucp_get_nbx(conn->ep, local, s.length, s.remote, rkey, param);
      if (UCS_PTR_IS_ERR(request)) {
        op->status = UCS_PTR_STATUS(request);
        break;
      }
      if (request != nullptr) ucp_request_free(request);
    }
    // Failed meanwhile: the operation was reported with its peer.
    if (conn->failure != UCS_OK) {
      AfterFlush(op, conn->failure);
      return;
    }
    Flush(op);
  }

  // Whether a range of this process holds one of this agent's own regions
  // (UCX allocates them as shared memory too): a peer's region never does.
  bool OverlapsLocalRegion(uintptr_t start, uint64_t length) const {
    for (const LocalRegion* region : regions_) {
      if (start < region->address + region->length && region->address < start + length) return true;
    }
    return false;
  }

  // The peer lives on this host and the engine can move the plan's bytes
  // itself, which it does, synchronously (as UCX's own cma copy is):
  // - into the peer's shared memory mapped here (UCX allocated it on this
  //   host), one memcpy per descriptor. UCX itself would copy small requests
  //   twice (through its bounce buffer) or emulate large ones with active
  //   messages, which halves the throughput of a KV request's thousands of
  //   16-64 KiB descriptors;
  // - into any other memory of the peer's process (a registered Buffer), by
  //   the kernel's cross-memory copy. UCX 1.13 picks no cma lane for it and
  //   emulates the put over the shared-memory queues: half the speed of
  //   allocate() on a quiet host, a hundredth when the peer's cores are busy
  //   (every put waits for its CPU to acknowledge it), and a peer killed
  //   mid-acknowledgement leaves this worker's receive queue stopped for
  //   every peer.
  // All or nothing: a plan with any other segment goes through UCX. False
  // when it did not (the plan goes through UCX); otherwise the operation is
  // finished or failed.
  bool CopyDirectly(const Plan& plan, bool write, UcxOp* op) {
    UcxConn* conn = op->conn;
    if (!direct_copy_ || plan.segments.empty()) return false;
    uint64_t total = 0;
    bool cross_process = false;
    for (const Segment& s : plan.segments) {
      if (s.remote_region == nullptr || s.local_region->kind != MemKind::kDram) return false;
      const RemoteRegion& r = *s.remote_region;
      if (r.engine_mapped == nullptr || s.remote < r.mapped_begin || s.remote + s.length > r.mapped_end) {
        if (conn->cma_pid == 0 || r.kind != MemKind::kDram) return false;
        cross_process = true;
      }
      total += s.length;
    }
    const bool streaming = plan.segments.size() > 1 && total >= kStreamingCopyBytes;
    ProcessCopy kernel(cross_process ? conn->cma_pid : 0, write);
    for (const Segment& s : plan.segments) {
      const RemoteRegion& r = *s.remote_region;
      const uint64_t end = s.remote + s.length;
      // The part in mapped memory (all of it, or the whole pages of a
      // shared buffer) is copied here; the bytes around it by the kernel.
      const uint64_t from_mapped = r.engine_mapped == nullptr ? end : std::max(s.remote, r.mapped_begin);
      const uint64_t to_mapped = r.engine_mapped == nullptr ? end : std::min(end, r.mapped_end);
      if (from_mapped >= to_mapped) {
        if (!kernel.Add(s.local, s.remote, s.length)) break;
        continue;
      }
      if (from_mapped > s.remote && !kernel.Add(s.local, s.remote, from_mapped - s.remote)) break;
      if (to_mapped < end && !kernel.Add(s.local + (to_mapped - s.remote), to_mapped, end - to_mapped)) break;
      uint8_t* remote = r.engine_mapped + (from_mapped - r.mapped_begin);
      auto* local = reinterpret_cast<uint8_t*>(s.local + (from_mapped - s.remote));
      uint8_t* to = write ? remote : local;
      const uint8_t* from = write ? local : remote;
      if (streaming) {
        CopyStreaming(to, from, to_mapped - from_mapped);
      } else {
        std::memcpy(to, from, to_mapped - from_mapped);
      }
    }
    if (cross_process && !kernel.Finish()) return CrossMemoryFailed(kernel, op);
    // The data's stores (streaming ones included) are visible before the
    // notification that follows.
    StoreFence();
    AfterFlush(op, UCS_OK);
    return true;
  }

  // A cross-memory copy failed: the peer's process is gone (its work fails
  // now, before its pidfd says so), or the kernel does not let this process
  // reach it (then UCX does, from this plan on: copied again, the bytes
  // already moved are the same), or the peer's memory is not mapped there.
  bool CrossMemoryFailed(const ProcessCopy& kernel, UcxOp* op) {
    UcxConn* conn = op->conn;
    const std::string& name = conn->peer->name;
    if (kernel.error() == EPERM) {
      conn->cma_pid = 0;
      return false;
    }
    if (kernel.error() == ESRCH) {
      FailConn(conn, UCS_ERR_CONNECTION_RESET, PeerExited(*conn->peer));
      AfterFlush(op, UCS_ERR_CONNECTION_RESET);
      return true;
    }
    char where[32];
    std::snprintf(where, sizeof where, "0x%llx", static_cast<unsigned long long>(kernel.failed_remote()));
    FailOp(op, kernel.error() == EFAULT
                   ? Status::Error(Code::kNotRegistered, "peer '" + name + "' has no memory mapped at " + where +
                                                             " (freed without being deregistered?)")
                   : Status::Error(Code::kEngine, "copying to or from peer '" + name + "' at " + where + ": " +
                                                      std::strerror(kernel.error())));
    return true;
  }

  // Fails one operation with its own reason (its peer is fine).
  void FailOp(UcxOp* op, Status why) {
    Unlink(op);
    op->reported = true;
    events_->OperationDone(op->token, std::move(why), NowNs() - op->start_ns);
    Finish(op);
  }

  // The pid of a peer this agent may copy into itself (CopyDirectly), or 0:
  // on another host or in another pid namespace, in this very process (UCX's
  // self transport copies directly there), or a pid that names a later
  // process now. A peer that dies afterwards is found by its pidfd, or by the
  // copy failing with ESRCH; the pid cannot name another process before the
  // dead one is reaped.
  pid_t CrossMemoryPid(const ProcessIdentity& peer) const {
    if (!cma_ || peer.pid == 0 || peer.pid == identity_.pid || !identity_.SameProcessSpace(peer)) return 0;
    if (peer.start_time == 0 || ProcessStartTime(peer.pid) != peer.start_time) return 0;
    return static_cast<pid_t>(peer.pid);
  }

  void Notify(Peer* peer, const std::vector<uint8_t>& message, uint32_t token) override {
    auto* conn = static_cast<UcxConn*>(peer->engine_conn);
    UcxOp* op = NewOp(conn, token, &message);
    if (conn->failure != UCS_OK) {
      op->status = conn->failure;
      Finish(op);
      return;
    }
    SendNotification(op);
  }

  bool Progress() override {
    bool progressed = ucp_worker_progress(worker_) != 0;
    progressed |= ReceiveControl();
    if (!close_after_progress_.empty() || deferred_closes_ > 0) CloseQueued();
    return progressed;
  }

  // While a close waits, the owner thread comes back to check it.
  int idle_poll_ms() const override { return deferred_closes_ > 0 ? kCloseDeferredPollMs : -1; }

  int event_fd() const override { return event_fd_; }

  bool Arm() override { return ucp_worker_arm(worker_) == UCS_OK; }

  void Shutdown() override {
    shutting_down_ = true;
    const std::vector<UcxConn*> all(conns_.begin(), conns_.end());
    for (UcxConn* conn : all) {
      conn->report_destroyed = false;
      Destroy(conn);
    }
    const auto deadline = std::chrono::steady_clock::now() + kShutdownDeadline;
    while ((live_ops_ > 0 || closing_ > 0) && std::chrono::steady_clock::now() < deadline) {
      ucp_worker_progress(worker_);
    }
    const std::vector<LocalRegion*> registered(regions_.begin(), regions_.end());
    for (LocalRegion* region : registered) Deregister(region);
    Teardown();
    // Endpoints still closing at the deadline (a silent peer) went with the
    // worker; what kvxfer held for them goes now.
    for (UcxConn* conn : conns_) {
      for (UcxOp* op = conn->ops; op != nullptr;) {
        UcxOp* next = op->next;
        delete op;
        op = next;
      }
      delete conn;
    }
    conns_.clear();
    // Their ops were reported and recycled; UCX went with the worker.
    for (UcxConn* conn : orphans_) delete conn;
    orphans_.clear();
  }

 private:
  void Destroy(UcxConn* conn) {
    conn->destroy_requested = true;
    switch (conn->endpoint) {
      case UcxConn::Endpoint::kOpen:
        CloseEndpoint(conn);
        break;
      case UcxConn::Endpoint::kClosing:
        break;  // EndpointClosed finishes it
      case UcxConn::Endpoint::kClosed:
        ForgetConn(conn);
        break;
    }
  }

  // Closes the endpoint (by force once it failed: UCX can flush nothing to a
  // dead peer); EndpointClosed follows, now or from progress.
  //
  // A failed endpoint closes only once UCX has called back every request on
  // it, and never from inside a UCX callback (CloseQueued, after progress;
  // `now` is CloseQueued's). Closed by force with a flush still out, UCX
  // 1.22 later resumed the flush on the freed endpoint (ucp_ep_flush_progress
  // from ucp_ep_flush_resume_slow_path_callback), and closed from inside
  // UCX's failure handling, UCX went on with the freed endpoint (UCX 1.13:
  // ucs_mpool_get_grow; 1.22: ucp_stream_ep_cleanup): each a SIGSEGV within
  // 30 rounds of test/faults/kill.test.ts over tcp. Shutdown does not wait.
  void CloseEndpoint(UcxConn* conn, bool now = false) {
    if (conn->failure != UCS_OK && !shutting_down_ && !now) {
      if (!conn->close_deferred) {
        conn->close_deferred = true;
        conn->close_deferred_ns = NowNs();
        ++deferred_closes_;
      }
      if (conn->requests == 0) QueueClose(conn);
      return;
    }
    if (conn->close_deferred) {
      conn->close_deferred = false;
      --deferred_closes_;
    }
    ucp_request_param_t param{};
    param.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    // A failed endpoint can only be closed by force. A healthy one is
    // flushed and disconnected politely, at shutdown too: cut off with puts
    // in flight over an emulated (active-message) RMA lane, as over tcp, the
    // peer's UCX aborts its process when it cannot acknowledge them
    // (ucp_progress_rma_cmpl, UCX 1.13 to 1.22). Shutdown bounds the wait.
    param.flags = conn->failure != UCS_OK ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    param.cb.send = &UcxEngine::OnEndpointClosed;
    param.user_data = conn;
    ++closing_;
    conn->endpoint = UcxConn::Endpoint::kClosing;
    ucs_status_ptr_t request = ucp_ep_close_nbx(conn->ep, &param);
    if (UCS_PTR_IS_PTR(request)) {
      conn->close_request = request;
    } else {
      EndpointClosed(conn);
    }
  }

  // The peer failed: every operation still waiting on it fails now, new ones
  // are refused, and its endpoint closes at once, which frees what UCX holds
  // for it (shared-memory attachments, keys).
  void FailConn(UcxConn* conn, ucs_status_t status, Status why) {
    if (conn->failure != UCS_OK) return;
    conn->failure = status;
    conn->failure_status = std::move(why);
    if (conn->peer != nullptr && !shutting_down_) events_->PeerFailed(conn->peer, conn->failure_status);
    ReportOps(conn, conn->failure_status);
    if (conn->endpoint == UcxConn::Endpoint::kOpen && !shutting_down_) CloseEndpoint(conn);
  }

  // Every operation of the connection not reported yet fails now with `why`;
  // UCX's callbacks for them later only recycle them.
  void ReportOps(UcxConn* conn, const Status& why) {
    while (conn->ops != nullptr) {
      UcxOp* op = conn->ops;
      Unlink(op);
      op->reported = true;
      events_->OperationDone(op->token, why, NowNs() - op->start_ns);
    }
  }

  Status PackKey(ucp_mem_h memh, LocalRegion* region) {
    void* key = nullptr;
    size_t key_length = 0;
    ucs_status_t st = ucp_rkey_pack(context_, memh, &key, &key_length);
    if (st != UCS_OK) return UcsError(Code::kEngine, "packing a remote key", st);
    const auto* key_bytes = static_cast<const uint8_t*>(key);
    region->remote_key.assign(key_bytes, key_bytes + key_length);
    ucp_rkey_buffer_release(key);
    return Status::Ok();
  }

  Status Fail(Status status) {
    Teardown();
    return status;
  }

  void Teardown() {
    if (worker_ != nullptr) {
      // A peer that disconnected just now leaves UCX a one-shot callback on
      // this worker for the internal endpoint it replied on; destroyed with
      // it still queued, UCX 1.13 aborts the process (ucp_ep.c:382,
      // "req->flags & UCP_REQUEST_FLAG_RELEASED": 2 of 8 soak runs whose
      // worker_threads ended with two connected agents). Progress until the
      // worker is quiet first, for a bounded time.
      const auto quiet_by = std::chrono::steady_clock::now() + kQuietBeforeDestroy;
      for (int idle = 0; idle < 3 && std::chrono::steady_clock::now() < quiet_by;) {
        idle = ucp_worker_progress(worker_) == 0 ? idle + 1 : 0;
      }
      // A close still in flight (its peer silent past the shutdown deadline,
      // or its last step queued on the worker's progress) must be released
      // to UCX first: UCX 1.13 aborts on a user's close request it finds
      // unreleased while it destroys the endpoint (ucp_ep.c:382, 1 soak run
      // in 12). UCX still calls it back, from ucp_worker_destroy. (Orphans
      // hold none: a connection is forgotten only once its endpoint closed.)
      for (UcxConn* conn : conns_) ReleaseClose(conn);
      // Receives still in flight are called back, cancelled, and free
      // their buffers.
      const std::vector<UcxControlRecv*> receiving(control_recvs_.begin(), control_recvs_.end());
      for (UcxControlRecv* recv : receiving) ucp_request_cancel(worker_, recv->request);
      // One UCX had matched already is not cancelled. An eager one finishes
      // as its last fragments arrive; a rendezvous (only a sender that is not
      // kvxfer sends one: kvxfer's own messages are eager) waits on its
      // sender, and if that sender stopped, UCX 1.13 aborts the process
      // destroying the worker while the endpoint to it still holds the
      // request (ucp_ep.c:437, proto_reqs). So progress a while, for the rest
      // to finish or for UCX to fail that endpoint; a worker still holding
      // one then is left undestroyed, with its context: memory and
      // descriptors lost to the process, rather than the process.
      const auto settled_by = std::chrono::steady_clock::now() + kReceivesSettleDeadline;
      while (!control_recvs_.empty() && std::chrono::steady_clock::now() < settled_by) ucp_worker_progress(worker_);
      if (!control_recvs_.empty()) {
        new std::shared_ptr<UcxContext>(std::move(context_holder_));  // never released
        worker_ = nullptr;
        context_ = nullptr;
        event_fd_ = -1;
        return;
      }
      ucp_worker_destroy(worker_);
    }
    worker_ = nullptr;
    context_holder_.reset();  // ucp_cleanup, now or when the last allocation goes
    context_ = nullptr;
    event_fd_ = -1;
  }

  static void ReleaseClose(UcxConn* conn) {
    if (conn->close_request == nullptr) return;
    ucp_request_free(conn->close_request);
    conn->close_request = nullptr;
  }

  UcxOp* NewOp(UcxConn* conn, uint32_t token, const std::vector<uint8_t>* message) {
    UcxOp* op;
    if (spare_ops_.empty()) {
      op = new UcxOp;
    } else {
      op = spare_ops_.back();
      spare_ops_.pop_back();
    }
    // A recycled op keeps its frame's capacity: a notification after a
    // transfer costs no allocation.
    std::vector<uint8_t> frame = std::move(op->frame);
    *op = UcxOp{this, conn, token, NowNs(), message, {}};
    op->frame = std::move(frame);
    ++live_ops_;
    op->next = conn->ops;
    if (conn->ops != nullptr) conn->ops->prev = op;
    conn->ops = op;
    return op;
  }

  void Unlink(UcxOp* op) {
    if (op->prev != nullptr) {
      op->prev->next = op->next;
    } else {
      op->conn->ops = op->next;
    }
    if (op->next != nullptr) op->next->prev = op->prev;
    op->prev = op->next = nullptr;
  }

  void Flush(UcxOp* op) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &UcxEngine::OnFlushed;
    param.user_data = op;
    ucs_status_ptr_t request = ucp_ep_flush_nbx(op->conn->ep, &param);
    if (UCS_PTR_IS_PTR(request)) {
      ++op->conn->requests;
    } else {
      AfterFlush(op, UCS_PTR_STATUS(request));
    }
  }

  void AfterFlush(UcxOp* op, ucs_status_t status) {
    if (op->status == UCS_OK) op->status = status;
    // Reported failed with its peer: nothing more goes out for it.
    if (op->reported) {
      Finish(op);
      return;
    }
    // The flush means the data is in the peer's memory; only then may the
    // notification that announces it go out.
    if (op->status == UCS_OK && op->message != nullptr) {
      SendNotification(op);
      return;
    }
    Finish(op);
  }

  // `payload` after control_header_.
  std::vector<uint8_t> Frame(const std::vector<uint8_t>& payload) const {
    std::vector<uint8_t> frame;
    FrameInto(payload, &frame);
    return frame;
  }

  void FrameInto(const std::vector<uint8_t>& payload, std::vector<uint8_t>* frame) const {
    frame->assign(control_header_.begin(), control_header_.end());
    frame->insert(frame->end(), payload.begin(), payload.end());
  }

  // One of kvxfer's control messages (ucx_control.h); `done` runs unless it
  // completes at once (then the status says how).
  static ucs_status_ptr_t SendControl(ucp_ep_h ep, ControlKind kind, const std::vector<uint8_t>& frame,
                                      ucp_send_nbx_callback_t done, void* user_data) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = done;
    param.user_data = user_data;
    return ucp_tag_send_nbx(ep, frame.data(), frame.size(), ControlTagOf(kind), &param);
  }

  void SendNotification(UcxOp* op) {
    FrameInto(*op->message, &op->frame);
    ucs_status_ptr_t request =
        SendControl(op->conn->ep, ControlKind::kNotification, op->frame, &UcxEngine::OnNotificationSent, op);
    if (UCS_PTR_IS_PTR(request)) {
      ++op->conn->requests;
    } else {
      op->status = UCS_PTR_STATUS(request);
      Finish(op);
    }
  }

  void Revoke(const LocalRegion& region) {
    const std::vector<uint8_t> message = wire::PackRevocation(
        identity_.incarnation,
        {wire::RegionFields{region.address, region.length, static_cast<uint8_t>(region.kind), region.device}});
    auto frame = std::make_shared<const std::vector<uint8_t>>(Frame(message));
    for (UcxConn* conn : conns_) {
      if (conn->endpoint != UcxConn::Endpoint::kOpen || conn->failure != UCS_OK || conn->peer == nullptr) continue;
      SendOwned(conn, ControlKind::kRevocation, frame);
    }
  }

  void SendOwned(UcxConn* conn, ControlKind kind, const std::shared_ptr<const std::vector<uint8_t>>& frame) {
    auto* send = new UcxOwnedSend{conn, frame};
    if (UCS_PTR_IS_PTR(SendControl(conn->ep, kind, *frame, &UcxEngine::OnOwnedSent, send))) {
      ++conn->requests;
    } else {
      delete send;
    }
  }

  static void OnOwnedSent(void* request, ucs_status_t, void* user_data) {
    ucp_request_free(request);
    auto* send = static_cast<UcxOwnedSend*>(user_data);
    UcxConn* conn = send->conn;
    delete send;
    conn->engine->RequestDone(conn);
  }

  static std::vector<UcxConn::Key>::iterator FindKey(UcxConn* conn, ucp_rkey_h rkey) {
    return std::find_if(conn->keys.begin(), conn->keys.end(), [rkey](const UcxConn::Key& k) { return k.rkey == rkey; });
  }

  // Undoes what UnpackRegions added so far: their keys destroyed, none kept.
  static void DropAdded(UcxConn* conn, PeerUpdate* update) {
    for (std::unique_ptr<RemoteRegion>& added : update->added) {
      auto key = static_cast<ucp_rkey_h>(added->engine_key);
      conn->keys.erase(FindKey(conn, key));
      ucp_rkey_destroy(key);
    }
    update->added.clear();
  }

  // The regions of `md` that `conn` did not know, unpacked, and those it
  // knew that `md` lacks; `conn` knows `md`'s afterwards. All or nothing.
  Status UnpackRegions(UcxConn* conn, const UcxMetadata& md, PeerUpdate* update) {
    std::vector<UcxConn::KnownRegion> known;
    known.reserve(md.regions.size());
    std::vector<bool> kept(conn->known.size(), false);
    std::vector<MappedRange> peer_maps;  // read once, for the first shared region
    for (const UcxMetadataRegion& r : md.regions) {
      UcxConn::KnownRegion region{{r.address, r.length, static_cast<uint8_t>(r.kind), r.device},
                                  std::vector<uint8_t>(r.key, r.key + r.key_length),
                                  r.shared};
      bool had = false;
      for (size_t i = 0; i < conn->known.size() && !had; ++i) {
        had = !kept[i] && conn->known[i] == region;
        if (had) kept[i] = true;
      }
      known.push_back(std::move(region));
      if (had) continue;
      ucp_rkey_h rkey = nullptr;
      ucs_status_t st = ucp_ep_rkey_unpack(conn->ep, r.key, &rkey);
      if (st != UCS_OK) {
        DropAdded(conn, update);
        return UcsError(Code::kBadMetadata, "unpacking a remote key of peer '" + md.name + "'", st);
      }
      conn->keys.push_back({rkey, {}});
      auto added = std::make_unique<RemoteRegion>();
      added->address = r.address;
      added->length = r.length;
      added->kind = r.kind;
      added->device = r.device;
      added->engine_key = rkey;
      // The peer says where the region is and how long it is; UCX maps what
      // its key says. A region that reaches past that mapping, or onto this
      // agent's own memory, is a lie (a real one is the memory its key was
      // made for): any copy into it, ours or UCX's own through that mapping,
      // would hit other memory of this process. Refused as bad metadata.
      void* mapped = nullptr;
      if (r.kind == MemKind::kDram && ucp_rkey_ptr(rkey, r.address, &mapped) == UCS_OK) {
        const auto at = reinterpret_cast<uintptr_t>(mapped);
        const Mapping mapping = SharedMappingOf(at, r.length);
        if (mapping == Mapping::kDoesNotCover || OverlapsLocalRegion(at, r.length)) {
          ucp_rkey_destroy(rkey);
          conn->keys.pop_back();
          DropAdded(conn, update);
          char where[32];
          std::snprintf(where, sizeof where, "0x%llx", static_cast<unsigned long long>(r.address));
          return Status::Error(Code::kBadMetadata, "peer '" + md.name + "': the region at " + where + " (" +
                                                       std::to_string(r.length) +
                                                       " bytes) is not the memory its key maps on this host");
        }
        if (direct_copy_ && mapping == Mapping::kCovers) {
          added->engine_mapped = static_cast<uint8_t*>(mapped);
          added->mapped_begin = r.address;
          added->mapped_end = r.address + r.length;
          if (prefault_) PrefaultInBackground(mapped, r.length);
        }
      } else if (r.shared.length != 0 && conn->cma_pid != 0) {
        // Checked against the peer's own mappings: pages that do not check
        // out are reached by the kernel copy, as if not shared.
        PeerPages pages = PeerPages::Map(conn->cma_pid, r.shared, &peer_maps);
        if (pages.data() != nullptr) {
          added->engine_mapped = pages.data();
          added->mapped_begin = r.shared.begin;
          added->mapped_end = r.shared.begin + r.shared.length;
          // Not faulted in ahead, unlike a shared pool: that would fill
          // the file's holes (a buffer registered before it was written,
          // or a peer's huge sparse file) with memory charged to us.
          conn->keys.back().pages = std::move(pages);
        }
      }
      update->added.push_back(std::move(added));
    }
    for (size_t i = 0; i < conn->known.size(); ++i) {
      if (!kept[i]) update->removed.push_back(conn->known[i].fields);
    }
    conn->known = std::move(known);
    return Status::Ok();
  }

  // Tells the peers we reach of a new region: they merge our metadata into
  // the peer they loaded (OnMetadata), so they can reach it without the
  // application passing it around again.
  void PushMetadata() {
    if (!push_updates_ || shutting_down_) return;
    std::shared_ptr<const std::vector<uint8_t>> frame;
    for (UcxConn* conn : conns_) {
      if (conn->endpoint != UcxConn::Endpoint::kOpen || conn->failure != UCS_OK || conn->peer == nullptr) continue;
      if (!frame) frame = std::make_shared<const std::vector<uint8_t>>(Frame(Metadata()));
      SendOwned(conn, ControlKind::kMetadata, frame);
    }
  }

  // Takes every tagged message UCX holds for this worker. Called after each
  // progress: UCX keeps a tagged message nobody asked for (its unexpected
  // queue) until it is probed for, so one with a tag kvxfer does not send
  // is taken too (and dropped), or a peer could fill that queue for good.
  bool ReceiveControl() {
    bool received = false;
    for (;;) {
      ucp_tag_recv_info_t info{};
      ucp_tag_message_h message = ucp_tag_probe_nb(worker_, 0, 0, 1, &info);
      if (message == nullptr) return received;
      received = true;
      auto* recv = new UcxControlRecv{this, ControlKind::kNotification, {}};
      // One of an unknown kind, or longer than its kind may be, is taken
      // into no buffer at all: UCX completes it as truncated, and it is
      // dropped without its bytes being held.
      if (ControlKindOf(info.sender_tag, &recv->kind) && info.length <= MaxControlFrameBytes(recv->kind)) {
        recv->bytes.resize(info.length);
      }
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      param.cb.recv = &UcxEngine::OnControlReceived;
      param.user_data = recv;
      ucs_status_ptr_t request = ucp_tag_msg_recv_nbx(worker_, recv->bytes.data(), recv->bytes.size(), message, &param);
      recv->posted = true;
      if (!UCS_PTR_IS_PTR(request)) {
        ControlReceived(recv, UCS_PTR_STATUS(request));
      } else if (recv->done) {
        ControlReceived(recv, recv->status);
      } else {
        recv->request = request;
        control_recvs_.insert(recv);
      }
    }
  }

  static void OnControlReceived(void* request, ucs_status_t status, const ucp_tag_recv_info_t*, void* user_data) {
    ucp_request_free(request);
    auto* recv = static_cast<UcxControlRecv*>(user_data);
    recv->done = true;
    recv->status = status;
    if (!recv->posted) return;
    recv->engine->control_recvs_.erase(recv);
    recv->engine->ControlReceived(recv, status);
  }

  // Frames from peers: anything malformed is dropped.
  void ControlReceived(UcxControlRecv* recv, ucs_status_t status) {
    std::unique_ptr<UcxControlRecv> owned(recv);
    ControlFrame frame;
    if (status != UCS_OK || shutting_down_ || !ParseControlFrame(recv->bytes.data(), recv->bytes.size(), &frame)) {
      return;
    }
    switch (recv->kind) {
      case ControlKind::kNotification:
        if (frame.payload_length > limits::kMaxNotificationBytes) return;
        events_->NotificationReceived(std::move(frame.sender), frame.incarnation,
                                      std::vector<uint8_t>(frame.payload, frame.payload + frame.payload_length));
        return;
      case ControlKind::kMetadata:
        if (frame.payload_length > kMaxPushedMetadataBytes) return;
        events_->MetadataPushed(std::move(frame.sender), frame.incarnation,
                                std::vector<uint8_t>(frame.payload, frame.payload + frame.payload_length));
        return;
      case ControlKind::kRevocation:
        OnRevocation(std::move(frame));
        return;
    }
  }

  void OnRevocation(ControlFrame frame) {
    std::string& peer = frame.sender;
    uint64_t incarnation = 0;
    std::vector<wire::RegionFields> regions;
    if (!wire::ParseRevocation(frame.payload, frame.payload_length, &incarnation, &regions) ||
        incarnation != frame.incarnation) {
      return;
    }
    // The same region registered again may come back with the same key:
    // newer metadata must then show it as new.
    for (UcxConn* conn : conns_) {
      if (conn->peer == nullptr || conn->peer->name != peer || conn->peer->identity.incarnation != incarnation) continue;
      auto& known = conn->known;
      known.erase(std::remove_if(known.begin(), known.end(),
                                 [&](const UcxConn::KnownRegion& k) {
                                   return std::any_of(regions.begin(), regions.end(), [&](const wire::RegionFields& r) {
                                     return r.address == k.fields.address && r.length == k.fields.length &&
                                            r.device == k.fields.device;
                                   });
                                 }),
                  known.end());
    }
    events_->RegionsRevoked(std::move(peer), incarnation, std::move(regions));
  }

  // UCX is done with the operation; it is reported unless its peer's
  // failure already reported it.
  void Finish(UcxOp* op) {
    --live_ops_;
    spare_ops_.push_back(op);
    if (op->reported) return;
    Unlink(op);
    Status status;
    if (op->status != UCS_OK) status = OperationFailure(op);
    events_->OperationDone(op->token, std::move(status), NowNs() - op->start_ns);
  }

  Status OperationFailure(const UcxOp* op) const {
    const std::string& peer = op->conn->peer->name;
    if (shutting_down_) {
      Status s = UcsError(Code::kClosed, "the agent was closed", op->status);
      s.message = "the agent was closed before the operation finished";
      return s;
    }
    if (op->conn->failure != UCS_OK) return op->conn->failure_status;
    if (IsPeerFailure(op->status)) {
      return UcsError(Code::kPeerUnreachable, "peer '" + peer + "' is unreachable", op->status);
    }
    return UcsError(Code::kEngine, "transfer with peer '" + peer + "'", op->status);
  }

  // The endpoint is closed: the peer's keys go with it. The connection
  // itself goes once the agent has destroyed the peer.
  void EndpointClosed(UcxConn* conn) {
    --closing_;
    conn->endpoint = UcxConn::Endpoint::kClosed;
    conn->ep = nullptr;
    for (UcxConn::Key& key : conn->keys) ucp_rkey_destroy(key.rkey);
    conn->keys.clear();
    if (conn->destroy_requested) ForgetConn(conn);
  }

  // The connection goes with its peer; while UCX still holds requests of it
  // (a force close returns at once, and UCX calls them back later, from
  // progress), it lives on as an orphan that the last one deletes.
  void ForgetConn(UcxConn* conn) {
    conns_.erase(conn);
    close_after_progress_.erase(std::remove(close_after_progress_.begin(), close_after_progress_.end(), conn),
                                close_after_progress_.end());
    Peer* peer = conn->peer;
    const bool report = conn->report_destroyed && !shutting_down_;
    if (conn->requests > 0) {
      Status gone = shutting_down_ ? Status::Error(Code::kClosed, "the agent was closed before the operation finished")
                    : conn->failure != UCS_OK ? conn->failure_status
                                              : Status::Error(Code::kPeerUnreachable, "the peer was forgotten");
      ReportOps(conn, gone);
      conn->peer = nullptr;
      conn->orphaned = true;
      orphans_.insert(conn);
    } else {
      delete conn;
    }
    if (peer == nullptr) return;
    peer->engine_conn = nullptr;
    if (report) events_->PeerDestroyed(peer);
  }

  static void OnFlushed(void* request, ucs_status_t status, void* user_data) {
    ucp_request_free(request);
    auto* op = static_cast<UcxOp*>(user_data);
    UcxConn* conn = op->conn;
    op->engine->AfterFlush(op, status);
    conn->engine->RequestDone(conn);
  }

  static void OnNotificationSent(void* request, ucs_status_t status, void* user_data) {
    ucp_request_free(request);
    auto* op = static_cast<UcxOp*>(user_data);
    UcxConn* conn = op->conn;
    if (op->status == UCS_OK) op->status = status;
    op->engine->Finish(op);
    conn->engine->RequestDone(conn);
  }

  // From UCX's callbacks: a close waiting for this happens after progress.
  void RequestDone(UcxConn* conn) {
    --conn->requests;
    if (conn->orphaned) {
      if (conn->requests == 0) {
        orphans_.erase(conn);
        delete conn;
      }
      return;
    }
    if (conn->requests == 0 && conn->close_deferred) QueueClose(conn);
  }

  void QueueClose(UcxConn* conn) {
    if (std::find(close_after_progress_.begin(), close_after_progress_.end(), conn) == close_after_progress_.end()) {
      close_after_progress_.push_back(conn);
    }
  }

  // Outside UCX's callbacks: the failed endpoints whose requests have all
  // been called back, and those that waited past kCloseDeferredLimitNs for
  // it (the peer is dead: what UCX holds for it must go).
  void CloseQueued() {
    const uint64_t now = NowNs();
    if (deferred_closes_ > 0) {
      for (UcxConn* conn : conns_) {
        if (conn->close_deferred && now - conn->close_deferred_ns > kCloseDeferredLimitNs) QueueClose(conn);
      }
    }
    while (!close_after_progress_.empty()) {
      UcxConn* conn = close_after_progress_.back();
      close_after_progress_.pop_back();
      const bool overdue = now - conn->close_deferred_ns > kCloseDeferredLimitNs;
      if (conn->endpoint == UcxConn::Endpoint::kOpen && (conn->requests == 0 || overdue)) CloseEndpoint(conn, true);
    }
  }

  static void OnEndpointClosed(void* request, ucs_status_t status, void* user_data) {
    auto* conn = static_cast<UcxConn*>(user_data);
    // Released by Teardown already: UCX frees it after this call.
    if (conn->close_request != nullptr) ucp_request_free(request);
    conn->close_request = nullptr;
    conn->engine->EndpointClosed(conn);
  }

  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* conn = static_cast<UcxConn*>(arg);
    if (conn->peer == nullptr) return;
    conn->engine->FailConn(
        conn, status, UcsError(Code::kPeerUnreachable, "peer '" + conn->peer->name + "' is unreachable", status));
  }

  EngineEvents* const events_;
  std::string name_;
  ProcessIdentity identity_;
  // Leads every control frame this agent sends (PackControlHeader).
  std::vector<uint8_t> control_header_;
  // Control messages UCX is still receiving (ReceiveControl).
  std::unordered_set<UcxControlRecv*> control_recvs_;
  ucp_context_h context_ = nullptr;
  // The context's transports can carry CUDA memory (ucp_context_query).
  bool cuda_memory_ = false;
  std::string transports_;
  std::shared_ptr<UcxContext> context_holder_;
  ucp_worker_h worker_ = nullptr;
  int event_fd_ = -1;
  std::vector<uint8_t> worker_address_;
  std::unordered_set<LocalRegion*> regions_;
  std::unordered_set<UcxConn*> conns_;
  // Forgotten connections UCX still has requests of (ForgetConn).
  std::unordered_set<UcxConn*> orphans_;
  // Ops are recycled: a small transfer should not cost an allocation.
  std::vector<UcxOp*> spare_ops_;
  size_t live_ops_ = 0;
  int closing_ = 0;
  size_t deferred_closes_ = 0;  // conns with close_deferred
  std::vector<UcxConn*> close_after_progress_;
  bool shutting_down_ = false;
  // Same-host peers' memory copied by the engine itself (CopyDirectly); off
  // with KVXFER_UCX_DIRECT_COPY=0, which the bench compares against.
  bool direct_copy_ = true;
  // Cross-memory copies allowed: direct copies on, and cma not left out of
  // the agent's transports.
  bool cma_ = true;
  // Allocated memory, and peers' memory mapped for direct copies, faulted
  // in ahead of use (PrefaultInBackground); off with KVXFER_UCX_PREFAULT=0.
  bool prefault_ = true;
  bool push_updates_ = true;
};

}  // namespace

std::string UcsStatusName(ucs_status_t status) {
  switch (status) {
#define KVXFER_UCS_NAME(s) \
  case s:                  \
    return #s;
    KVXFER_UCS_NAME(UCS_OK)
    KVXFER_UCS_NAME(UCS_INPROGRESS)
    KVXFER_UCS_NAME(UCS_ERR_NO_MESSAGE)
    KVXFER_UCS_NAME(UCS_ERR_NO_RESOURCE)
    KVXFER_UCS_NAME(UCS_ERR_IO_ERROR)
    KVXFER_UCS_NAME(UCS_ERR_NO_MEMORY)
    KVXFER_UCS_NAME(UCS_ERR_INVALID_PARAM)
    KVXFER_UCS_NAME(UCS_ERR_UNREACHABLE)
    KVXFER_UCS_NAME(UCS_ERR_INVALID_ADDR)
    KVXFER_UCS_NAME(UCS_ERR_NOT_IMPLEMENTED)
    KVXFER_UCS_NAME(UCS_ERR_MESSAGE_TRUNCATED)
    KVXFER_UCS_NAME(UCS_ERR_NO_PROGRESS)
    KVXFER_UCS_NAME(UCS_ERR_BUFFER_TOO_SMALL)
    KVXFER_UCS_NAME(UCS_ERR_NO_ELEM)
    KVXFER_UCS_NAME(UCS_ERR_SOME_CONNECTS_FAILED)
    KVXFER_UCS_NAME(UCS_ERR_NO_DEVICE)
    KVXFER_UCS_NAME(UCS_ERR_BUSY)
    KVXFER_UCS_NAME(UCS_ERR_CANCELED)
    KVXFER_UCS_NAME(UCS_ERR_SHMEM_SEGMENT)
    KVXFER_UCS_NAME(UCS_ERR_ALREADY_EXISTS)
    KVXFER_UCS_NAME(UCS_ERR_OUT_OF_RANGE)
    KVXFER_UCS_NAME(UCS_ERR_TIMED_OUT)
    KVXFER_UCS_NAME(UCS_ERR_EXCEEDS_LIMIT)
    KVXFER_UCS_NAME(UCS_ERR_UNSUPPORTED)
    KVXFER_UCS_NAME(UCS_ERR_REJECTED)
    KVXFER_UCS_NAME(UCS_ERR_NOT_CONNECTED)
    KVXFER_UCS_NAME(UCS_ERR_CONNECTION_RESET)
    KVXFER_UCS_NAME(UCS_ERR_ENDPOINT_TIMEOUT)
#undef KVXFER_UCS_NAME
    default:
      return "UCS_ERR_" + std::to_string(-static_cast<int>(status));
  }
}

Status UcsError(Code code, const std::string& what, ucs_status_t status) {
  return Status::Engine(code, what + ": " + ucs_status_string(status), UcsStatusName(status),
                        static_cast<int>(status));
}

namespace {

// Reads the interface configuration of UCX's shared-memory transports once,
// so that UCX counts the environment variables set for them as used: an
// agent whose transports leave shared memory out (`transports: 'tcp'`)
// would otherwise make UCX warn that they are unused.
void ReadSharedMemoryConfig() {
  ForEachUcxMd(
      [](uct_component_h, const char* md_name, uct_md_h md) {
        uct_iface_config_t* config = nullptr;
        if (uct_md_iface_config_read(md, md_name, nullptr, nullptr, &config) == UCS_OK) uct_config_release(config);
      },
      [](const char* md_name) { return std::strcmp(md_name, "posix") == 0 || std::strcmp(md_name, "sysv") == 0; });
}

// KVXFER_LOG_LEVEL (error, warn, info, debug, trace) is the one knob for
// UCX's and NIXL's logs, where UCX_LOG_LEVEL and NIXL_LOG_LEVEL are not set.
// UCX read its environment when it loaded, before us: its level is set in
// place. NIXL reads NIXL_LOG_LEVEL when it is loaded, later.
void ApplyLogLevel() {
  const char* level = std::getenv("KVXFER_LOG_LEVEL");
  if (level == nullptr || level[0] == '\0') return;
  std::string lower(level), upper(level);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  bool known = false;
  for (const char* name : {"error", "warn", "info", "debug", "trace"}) known |= lower == name;
  if (!known) {
    std::fprintf(stderr, "kvxfer: KVXFER_LOG_LEVEL=%s is not one of error, warn, info, debug, trace; ignored\n",
                 level);
    return;
  }
  if (std::getenv("UCX_LOG_LEVEL") == nullptr) ucs_global_opts_set_value("LOG_LEVEL", lower.c_str());
  setenv("NIXL_LOG_LEVEL", upper.c_str(), 0);
}

}  // namespace

void PrepareUcxEnvironment() {
  static std::once_flag log_level;
  std::call_once(log_level, ApplyLogLevel);
  // Peer error handling is on for every endpoint, and UCX then drops its
  // shared-memory transports unless they are told to report peer failures
  // (off by default): same-host transfers would fall back to TCP. UCX 1.13
  // takes these transport keys only from the environment (ucp_config_modify
  // leaves them "invalid"), so they go there, once per process, before any
  // agent reads its configuration; a value the user set wins, and a UCX_TLS
  // without shared memory leaves them out.
  static std::once_flag environment;
  std::call_once(environment, [] {
    const char* tls = std::getenv("UCX_TLS");
    if (!AllowsSharedMemory(tls == nullptr ? "" : tls)) return;
    setenv("UCX_POSIX_ERROR_HANDLING", "y", 0);
    setenv("UCX_SYSV_ERROR_HANDLING", "y", 0);
  });
  // UCX dlopens its transport modules on first use. Left to an agent's
  // owner thread, that happens while V8 runs on the JS thread, and a core
  // dump of a rare crash at agent start caught V8's GC faulting just then.
  // Listing the components (to read the shared-memory configuration) loads
  // them all, here, once, on the JS thread.
  static std::once_flag modules;
  std::call_once(modules, ReadSharedMemoryConfig);
}

std::unique_ptr<Engine> CreateUcxEngine(EngineEvents* events) {
  return std::make_unique<UcxEngine>(events);
}

}  // namespace kvxfer
