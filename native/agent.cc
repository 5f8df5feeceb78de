#include "agent.h"

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "addon.h"
#include "descs.h"
#include "errors.h"

namespace kvxfer {

namespace {

enum EventKind { kEventOperation = 0, kEventNotification = 1, kEventPeerFailed = 2 };

constexpr double kMaxBusyPollUs = 10000;
constexpr uint64_t kSameTurnGapNs = 10000;

uint64_t ToU64(Napi::Env env, const Napi::Value& value, const char* what) {
  if (value.IsBigInt()) {
    bool lossless = false;
    uint64_t v = value.As<Napi::BigInt>().Uint64Value(&lossless);
    if (lossless) return v;
  } else if (value.IsNumber()) {
    double d = value.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d) return static_cast<uint64_t>(d);
  }
  Throw(env, Code::kInvalidArg, std::string(what) + " must be a non-negative integer (number or bigint)");
}

uint32_t ToU32(Napi::Env env, const Napi::Value& value, const char* what) {
  uint64_t v = ToU64(env, value, what);
  if (v > UINT32_MAX) Throw(env, Code::kInvalidArg, std::string(what) + " is too large");
  return static_cast<uint32_t>(v);
}

Napi::Uint8Array ToBytes(Napi::Env env, const Napi::Value& value, const char* what) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Throw(env, Code::kInvalidArg, std::string(what) + " must be a Uint8Array");
  }
  return value.As<Napi::Uint8Array>();
}

std::string Hex(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string DescText(const char* side, uint32_t i, const Desc& d) {
  return std::string(side) + " descriptor " + std::to_string(i) + " (" + Hex(d.address) + ", " +
         std::to_string(d.length) + " bytes)";
}

// The region holding [d.address, d.address + d.length), searching regions
// sorted by start address. Regions may overlap, so a miss keeps looking at
// earlier ones; the common hit costs one binary search.
template <typename T, typename Get>
const T* FindContaining(const std::vector<T>& sorted, const Desc& d, Get get, bool* partial) {
  auto it = std::upper_bound(sorted.begin(), sorted.end(), d.address,
                             [&](uint64_t a, const T& r) { return a < get(r).address; });
  while (it != sorted.begin()) {
    --it;
    const auto& r = get(*it);
    const uint64_t offset = d.address - r.address;
    if (offset >= r.length) continue;
    if (r.kind == MemKind::kVram && r.device != d.device) continue;
    if (d.length <= r.length - offset) return &*it;
    *partial = true;
  }
  return nullptr;
}

std::string OptionalString(Napi::Env env, Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return std::string();
  if (!v.IsString()) Throw(env, Code::kInvalidArg, std::string(key) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

// { engine: 'ucx' | 'nixl', transports?, backend?, backendParams?: { key: value } }
EngineOptions ParseOptions(Napi::Env env, Napi::Object o) {
  EngineOptions options;
  options.engine = OptionalString(env, o, "engine");
  if (options.engine.empty()) options.engine = "ucx";
  if (options.engine != "ucx" && options.engine != "nixl") {
    Throw(env, Code::kInvalidArg, "engine must be 'ucx' or 'nixl'");
  }
  options.transports = OptionalString(env, o, "transports");
  options.backend = OptionalString(env, o, "backend");
  Napi::Value params = o.Get("backendParams");
  if (!params.IsUndefined()) {
    if (!params.IsObject()) Throw(env, Code::kInvalidArg, "backendParams must be an object of strings");
    Napi::Object p = params.As<Napi::Object>();
    Napi::Array keys = p.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
      Napi::Value value = p.Get(key);
      if (!value.IsString()) Throw(env, Code::kInvalidArg, "backendParams." + key + " must be a string");
      options.backend_params.emplace_back(key, value.As<Napi::String>().Utf8Value());
    }
  }
  return options;
}

}  // namespace

Napi::Function NativeAgent::Init(Napi::Env env) {
  return DefineClass(env, "NativeAgent",
                     {
                         InstanceMethod<&NativeAgent::Start>("start"),
                         InstanceMethod<&NativeAgent::RegisterMemory>("registerMemory"),
                         InstanceMethod<&NativeAgent::RegisterAddress>("registerAddress"),
                         InstanceMethod<&NativeAgent::Allocate>("allocate"),
                         InstanceMethod<&NativeAgent::Deregister>("deregister"),
                         InstanceMethod<&NativeAgent::View>("view"),
                         InstanceMethod<&NativeAgent::Metadata>("metadata"),
                         InstanceMethod<&NativeAgent::LoadPeer>("loadPeer"),
                         InstanceMethod<&NativeAgent::ForgetPeer>("forgetPeer"),
                         InstanceMethod<&NativeAgent::Prepare>("prepare"),
                         InstanceMethod<&NativeAgent::Release>("release"),
                         InstanceMethod<&NativeAgent::Notify>("notify"),
                         InstanceMethod<&NativeAgent::Close>("close"),
                         InstanceMethod<&NativeAgent::Hold>("hold"),
                         InstanceMethod<&NativeAgent::Unhold>("unhold"),
                         InstanceAccessor<&NativeAgent::Engine>("engine"),
                         InstanceMethod<&NativeAgent::Cancel>("cancel"),
                         InstanceMethod<&NativeAgent::Estimate>("estimate"),
                         InstanceMethod<&NativeAgent::BusyPollStats>("busyPollStats"),
                     });
}

NativeAgent::NativeAgent(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeAgent>(info) {
  Napi::Env env = info.Env();
  addon_ = env.GetInstanceData<KvxferAddon>();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsObject() || !info[2].IsFunction()) {
    Throw(env, Code::kInvalidArg, "NativeAgent(name, options, onEvents)");
  }
  name_ = info[0].As<Napi::String>().Utf8Value();
  if (name_.empty() || name_.size() > kMaxAgentNameBytes || name_.find('\0') != std::string::npos) {
    Throw(env, Code::kInvalidArg, "an agent name must be 1 to 255 bytes of UTF-8 without NUL");
  }
  EngineOptions options = ParseOptions(env, info[1].As<Napi::Object>());
  engine_name_ = options.engine;
  Napi::Value busy_poll = info[1].As<Napi::Object>().Get("busyPollUs");
  if (!busy_poll.IsUndefined()) {
    const double us = busy_poll.IsNumber() ? busy_poll.As<Napi::Number>().DoubleValue() : -1;
    if (!(us >= 0 && us <= kMaxBusyPollUs)) {
      Throw(env, Code::kInvalidArg, "busyPollUs must be a number from 0 to " + std::to_string(kMaxBusyPollUs));
    }
    busy_poll_ns_ = static_cast<uint64_t>(us * 1000);
  }
  DefinePostFunction(info.This().As<Napi::Object>());

  OpenLoopHandles(env);
  try {
    on_events_ = Napi::Persistent(info[2].As<Napi::Function>());
    async_context_ = std::make_unique<Napi::AsyncContext>(env, "kvxfer agent");
    env_ = env;
    // The handles outlive the owner thread: every teardown path joins the
    // thread before closing them.
    uv_async_t* wake = &loop_->wake;
    owner_ = std::make_unique<OwnerThread>(name_, std::move(options),
                                           [wake] { uv_async_send(wake); });
  } catch (...) {
    // No destructor runs for a constructor that throws.
    CloseLoopHandles();
    throw;
  }
}

void NativeAgent::OpenLoopHandles(Napi::Env env) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    Throw(env, Code::kEngine, "no event loop to deliver completions on");
  }
  auto handles = std::make_unique<LoopHandles>();
  if (napi_add_async_cleanup_hook(env, &NativeAgent::OnEnvTeardown, handles.get(), &handles->hook) !=
      napi_ok) {
    Throw(env, Code::kEngine, "could not register the agent's cleanup hook");
  }
  if (uv_async_init(loop, &handles->wake, &NativeAgent::OnWake) != 0) {
    napi_remove_async_cleanup_hook(handles->hook);
    Throw(env, Code::kEngine, "could not create the completion wake-up handle");
  }
  // From here on the handles go only through CloseLoopHandles.
  loop_ = handles.release();
  loop_->agent = this;
  loop_->open = 2;
  loop_->wake.data = loop_;
  uv_unref(reinterpret_cast<uv_handle_t*>(&loop_->wake));
  uv_prepare_init(loop, &loop_->before_poll);
  loop_->before_poll.data = loop_;
  uv_prepare_start(&loop_->before_poll, &NativeAgent::OnBeforePoll);
  uv_unref(reinterpret_cast<uv_handle_t*>(&loop_->before_poll));
}

NativeAgent::~NativeAgent() {
  if (link_ != nullptr) link_->agent = nullptr;
  Teardown();
}

void NativeAgent::DefinePostFunction(Napi::Object self) {
  link_ = std::make_shared<AgentLink>();
  link_->agent = this;
  Napi::Env env = self.Env();
  auto* holder = new std::shared_ptr<AgentLink>(link_);
  napi_value fn = nullptr;
  napi_status status = napi_create_function(env, "post", NAPI_AUTO_LENGTH, &NativeAgent::PostFast, holder, &fn);
  if (status == napi_ok) {
    status = napi_add_finalizer(
        env, fn, holder,
        [](napi_env, void* data, void*) { delete static_cast<std::shared_ptr<AgentLink>*>(data); },
        nullptr, nullptr);
  }
  if (status != napi_ok) {
    delete holder;
    Throw(env, Code::kEngine, "could not create the agent's post function");
  }
  self.DefineProperty(Napi::PropertyDescriptor::Value("post", Napi::Value(env, fn), napi_default));
}

napi_value NativeAgent::PostFast(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg = nullptr;
  void* data = nullptr;
  try {
    if (napi_get_cb_info(env, info, &argc, &arg, nullptr, &data) != napi_ok) {
      Throw(env, Code::kInvalidArg, "post(transferId)");
    }
    NativeAgent* self = static_cast<std::shared_ptr<AgentLink>*>(data)->get()->agent;
    if (self == nullptr) Throw(env, Code::kClosed, "the agent is gone");
    uint32_t id = 0;
    if (argc < 1 || napi_get_value_uint32(env, arg, &id) != napi_ok) {
      Throw(env, Code::kInvalidArg, "transfer id must be a number");
    }
    napi_value token = nullptr;
    napi_create_uint32(env, self->PostById(Napi::Env(env), id), &token);
    return token;
  } catch (const Napi::Error& error) {
    error.ThrowAsJavaScriptException();
    return nullptr;
  }
}

// The environment is going away (process exit, a worker ending) with the
// agent still open. Closing the handles ends the hook (OnHandleClosed).
void NativeAgent::OnEnvTeardown(napi_async_cleanup_hook_handle, void* arg) {
  auto* handles = static_cast<LoopHandles*>(arg);
  if (handles->agent != nullptr) handles->agent->Teardown();
}

void NativeAgent::OnHandleClosed(uv_handle_t* handle) {
  auto* handles = static_cast<LoopHandles*>(handle->data);
  if (--handles->open > 0) return;
  napi_remove_async_cleanup_hook(handles->hook);
  delete handles;
}

// Stops the owner thread without going back to JS: for an agent the
// environment is tearing down or the garbage collector is reclaiming.
void NativeAgent::Teardown() {
  if (closed_) return;
  closing_ = true;
  if (owner_ != nullptr) {
    owner_->Submit(Command{Command::kClose});
    owner_->Join();
    owner_.reset();
  }
  ReleaseAll();
  async_context_.reset();
}

// The owner thread has stopped and the engine released everything: close
// the loop handles, and drop the JS-side tables and with them the references
// that pinned JS memory.
void NativeAgent::ReleaseAll() {
  closed_ = true;
  CloseLoopHandles();
  pending_.clear();
  xfers_.clear();
  peers_by_name_.clear();
  peers_.clear();
  region_index_.clear();
  regions_.clear();
}

// Only once the owner thread is gone: it signals the wake handle.
void NativeAgent::CloseLoopHandles() {
  if (loop_ == nullptr) return;
  loop_->agent = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&loop_->wake), &NativeAgent::OnHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&loop_->before_poll), &NativeAgent::OnHandleClosed);
  loop_ = nullptr;
  loop_ref_ = false;
  on_events_.Reset();
}

void NativeAgent::CheckOpen(Napi::Env env) const {
  if (closing_ || closed_) Throw(env, Code::kClosed, "agent '" + name_ + "' is closed");
}

uint32_t PendingTable::Add(PendingOp op) {
  uint32_t token;
  if (!free_.empty()) {
    token = free_.back();
    free_.pop_back();
  } else {
    token = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  slots_[token].live = true;
  slots_[token].op = std::move(op);
  ++count_;
  return token;
}

bool PendingTable::Take(uint32_t token, PendingOp* out) {
  if (token >= slots_.size() || !slots_[token].live) return false;
  Slot& slot = slots_[token];
  *out = std::move(slot.op);
  slot.op = PendingOp();
  slot.live = false;
  free_.push_back(token);
  --count_;
  return true;
}

const PendingOp* PendingTable::Find(uint32_t token) const {
  if (token >= slots_.size() || !slots_[token].live) return nullptr;
  return &slots_[token].op;
}

void PendingTable::clear() {
  slots_.resize(1);
  free_.clear();
  count_ = 0;
}

uint32_t NativeAgent::Submit(Command command, PendingOp pending) {
  const uint32_t token = pending_.Add(std::move(pending));
  command.token = token;
  owner_->Submit(std::move(command));
  UpdateRef(Env());
  return token;
}

void NativeAgent::UpdateRef(Napi::Env env) {
  const bool want = !closed_ && loop_ != nullptr && (!pending_.empty() || holds_ > 0);
  if (want == loop_ref_) return;
  loop_ref_ = want;
  if (want) {
    uv_ref(reinterpret_cast<uv_handle_t*>(&loop_->wake));
  } else {
    uv_unref(reinterpret_cast<uv_handle_t*>(&loop_->wake));
  }
}

Napi::Value NativeAgent::Start(const Napi::CallbackInfo& info) {
  CheckOpen(info.Env());
  if (started_) Throw(info.Env(), Code::kBusy, "agent already started");
  started_ = true;
  return Napi::Number::New(info.Env(), Submit(Command{Command::kStart}));
}

// Callers have checked the agent is open.
RegionEntry* NativeAgent::NewRegion(Napi::Env env) {
  auto entry = std::make_unique<RegionEntry>();
  entry->id = next_region_id_++;
  RegionEntry* raw = entry.get();
  regions_.emplace(raw->id, std::move(entry));
  return raw;
}

// -> [token, region id]; the completion carries the region's address.
Napi::Value NativeAgent::SubmitRegister(RegionEntry* entry, Command::Type type) {
  Napi::Env env = Env();
  Command command{type};
  command.region = &entry->region;
  PendingOp pending;
  pending.region = entry;
  uint32_t token = Submit(std::move(command), std::move(pending));
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, token));
  result.Set(1u, Napi::Number::New(env, entry->id));
  return result;
}

// registerMemory(bytes: Uint8Array): JS memory, kept alive by the region.
Napi::Value NativeAgent::RegisterMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  Napi::Uint8Array bytes = ToBytes(env, info[0], "memory");
  if (bytes.ByteLength() == 0) {
    Throw(env, Code::kInvalidArg, "cannot register empty (or detached) memory");
  }
  RegionEntry* entry = NewRegion(env);
  entry->region.address = reinterpret_cast<uint64_t>(bytes.Data());
  entry->region.length = bytes.ByteLength();
  entry->keepalive = Napi::Persistent(info[0]);
  return SubmitRegister(entry, Command::kRegister);
}

// registerAddress(kind, address, length, device): memory the caller owns,
// such as a CUDA allocation; or, for kind FILE, a file: address is the
// offset and device the file descriptor.
Napi::Value NativeAgent::RegisterAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  const uint32_t kind = ToU32(env, info[0], "kind");
  if (kind > static_cast<uint32_t>(MemKind::kFile)) Throw(env, Code::kInvalidArg, "unknown memory kind");
  const uint64_t address = ToU64(env, info[1], "address");
  const uint64_t length = ToU64(env, info[2], "length");
  const uint32_t device = ToU32(env, info[3], "device");
  if (address == 0 && kind != static_cast<uint32_t>(MemKind::kFile)) {
    Throw(env, Code::kInvalidArg, "address must not be 0");
  }
  if (length == 0) Throw(env, Code::kInvalidArg, "length must be greater than 0");
  if (length - 1 > UINT64_MAX - address) Throw(env, Code::kInvalidArg, "address + length wraps around");
  RegionEntry* entry = NewRegion(env);
  entry->region.address = address;
  entry->region.length = length;
  entry->region.kind = static_cast<MemKind>(kind);
  entry->region.device = device;
  return SubmitRegister(entry, Command::kRegister);
}

// allocate(length): host memory of any size, allocated by the engine where
// peers reach it fastest.
Napi::Value NativeAgent::Allocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  const uint64_t length = ToU64(env, info[0], "length");
  if (length == 0) Throw(env, Code::kInvalidArg, "length must be greater than 0");
  RegionEntry* entry = NewRegion(env);
  entry->region.length = length;
  return SubmitRegister(entry, Command::kAllocate);
}

Napi::Value NativeAgent::Deregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  const uint32_t id = ToU32(env, info[0], "region id");
  auto it = regions_.find(id);
  if (it == regions_.end() || it->second->state == RegionEntry::kDeregistering) {
    Throw(env, Code::kNotRegistered, "the region is not registered");
  }
  RegionEntry* entry = it->second.get();
  if (entry->state == RegionEntry::kRegistering) {
    Throw(env, Code::kBusy, "the region is still being registered");
  }
  if (entry->users > 0) {
    Throw(env, Code::kBusy,
          "the region is used by " + std::to_string(entry->users) +
              " unreleased transfer(s); release them (or let them finish) first");
  }
  entry->state = RegionEntry::kDeregistering;
  RebuildRegionIndex();
  Command command{Command::kDeregister};
  command.region = &entry->region;
  PendingOp pending;
  pending.region = entry;
  return Napi::Number::New(env, Submit(std::move(command), std::move(pending)));
}

// view(id, offset, length): a Buffer over allocate()d memory, no copy. The
// Buffer keeps the memory mapped even after the region is deregistered or
// the agent closed.
Napi::Value NativeAgent::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t id = ToU32(env, info[0], "region id");
  const uint64_t offset = ToU64(env, info[1], "offset");
  const uint64_t length = ToU64(env, info[2], "length");
  auto it = regions_.find(id);
  if (it == regions_.end() || it->second->state != RegionEntry::kRegistered) {
    Throw(env, Code::kNotRegistered, "the region is not registered");
  }
  RegionEntry* entry = it->second.get();
  if (!entry->region.memory) {
    Throw(env, Code::kInvalidArg, "view() is only available on memory from allocate()");
  }
  if (offset > entry->region.length || length > entry->region.length - offset) {
    Throw(env, Code::kOutOfRange,
          "view of " + std::to_string(length) + " bytes at offset " + std::to_string(offset) +
              " runs past the region's " + std::to_string(entry->region.length) + " bytes");
  }
  auto* hold = new std::shared_ptr<void>(entry->region.memory);
  auto* data = reinterpret_cast<uint8_t*>(entry->region.address) + offset;
  return Napi::Buffer<uint8_t>::New(
      env, data, static_cast<size_t>(length),
      [](Napi::Env, uint8_t*, std::shared_ptr<void>* h) { delete h; }, hold);
}

void NativeAgent::RebuildRegionIndex() {
  region_index_.clear();
  // Files are reached as the far side of a transfer (NIXL names this agent
  // as the peer), never by local descriptors: their offsets are not addresses.
  for (auto& [id, entry] : regions_) {
    if (entry->state == RegionEntry::kRegistered && entry->region.kind != MemKind::kFile) {
      region_index_.push_back(entry.get());
    }
  }
  std::sort(region_index_.begin(), region_index_.end(),
            [](const RegionEntry* a, const RegionEntry* b) {
              return a->region.address < b->region.address;
            });
}

Napi::Value NativeAgent::Metadata(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  return Napi::Buffer<uint8_t>::Copy(env, metadata_.data(), metadata_.size());
}

Napi::Value NativeAgent::Engine(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), engine_name_);
}

Napi::Value NativeAgent::LoadPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  Napi::Uint8Array blob = ToBytes(env, info[0], "metadata");
  Command command{Command::kLoadPeer};
  command.bytes.assign(blob.Data(), blob.Data() + blob.ByteLength());
  return Napi::Number::New(env, Submit(std::move(command)));
}

PeerEntry* NativeAgent::FindPeer(Napi::Env env, const Napi::Value& name) {
  if (!name.IsString()) Throw(env, Code::kInvalidArg, "peer must be a string (the peer's agent name)");
  std::string key = name.As<Napi::String>().Utf8Value();
  auto it = peers_by_name_.find(key);
  if (it == peers_by_name_.end()) {
    Throw(env, Code::kUnknownPeer, "unknown peer '" + key + "': load its metadata with loadPeer() first");
  }
  return it->second;
}

Napi::Value NativeAgent::ForgetPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  PeerEntry* entry = FindPeer(env, info[0]);
  peers_by_name_.erase(entry->peer->name);
  entry->forgotten = true;
  DropPeer(entry);
  return env.Undefined();
}

void NativeAgent::DropPeer(PeerEntry* entry) {
  if (--entry->users > 0 || closing_ || closed_) return;
  Command command{Command::kDestroyPeer};
  command.peer = entry->peer.get();
  owner_->Submit(std::move(command));  // reported by kPeerDestroyed, no promise
}

const RegionEntry* NativeAgent::FindLocal(const Desc& d, uint32_t i, Status* error) const {
  bool partial = false;
  const RegionEntry* const* hit = FindContaining(
      region_index_, d, [](const RegionEntry* e) -> const LocalRegion& { return e->region; },
      &partial);
  if (hit != nullptr) return *hit;
  *error = partial ? Status::Error(Code::kOutOfRange, DescText("local", i, d) +
                                                          " runs past the end of its region")
                   : Status::Error(Code::kNotRegistered,
                                   DescText("local", i, d) + " is not in a registered region");
  return nullptr;
}

const RemoteRegion* NativeAgent::FindRemote(const PeerEntry& peer, const Desc& d, uint32_t i,
                                            Status* error) const {
  bool partial = false;
  const RemoteRegion* hit = FindContaining(
      peer.peer->regions, d, [](const RemoteRegion& r) -> const RemoteRegion& { return r; },
      &partial);
  if (hit != nullptr) return hit;
  const std::string where = " of peer '" + peer.peer->name + "'";
  *error = partial ? Status::Error(Code::kOutOfRange, DescText("remote", i, d) +
                                                          " runs past the end of a region" + where)
                   : Status::Error(Code::kNotRegistered, DescText("remote", i, d) +
                                                             " is in no registered region" + where);
  return nullptr;
}

// prepare(op, local, remote, peer, notify?, remoteKind?) -> [id, bytes]. Every
// check happens here, once; post() then does no per-descriptor work on this
// thread.
Napi::Value NativeAgent::Prepare(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  const uint32_t op = ToU32(env, info[0], "op");
  if (op > static_cast<uint32_t>(XferOp::kRead)) Throw(env, Code::kInvalidArg, "op must be 'write' or 'read'");
  Napi::Uint8Array local_bytes = ToBytes(env, info[1], "local descriptor list");
  Napi::Uint8Array remote_bytes = ToBytes(env, info[2], "remote descriptor list");
  PeerEntry* peer = FindPeer(env, info[3]);
  if (peer->failed) Throw(env, peer->failure);
  std::vector<uint8_t> notify;
  if (info.Length() > 4 && !info[4].IsUndefined() && !info[4].IsNull()) {
    Napi::Uint8Array message = ToBytes(env, info[4], "notify");
    if (message.ByteLength() > kMaxNotificationBytes) {
      Throw(env, Code::kInvalidArg, "a notification holds at most 16 KiB");
    }
    notify.assign(message.Data(), message.Data() + message.ByteLength());
  }

  DescListView local, remote;
  Status s = DescListView::Parse(local_bytes.Data(), local_bytes.ByteLength(), &local);
  if (!s.ok()) Throw(env, Code::kInvalidArg, "local list: " + s.message);
  s = DescListView::Parse(remote_bytes.Data(), remote_bytes.ByteLength(), &remote);
  if (!s.ok()) Throw(env, Code::kInvalidArg, "remote list: " + s.message);
  if (local.count() != remote.count()) {
    Throw(env, Code::kInvalidArg,
          "the local list has " + std::to_string(local.count()) + " descriptors and the remote list " +
              std::to_string(remote.count()));
  }
  if (local.count() == 0) Throw(env, Code::kInvalidArg, "a transfer needs at least one descriptor");

  auto xfer = std::make_unique<XferEntry>();
  Plan& plan = *xfer->plan;
  plan.op = static_cast<XferOp>(op);
  plan.peer = peer->peer.get();
  int remote_kind = -1;  // default: the local side's kind
  if (info.Length() > 5 && !info[5].IsUndefined()) {
    remote_kind = static_cast<int>(ToU32(env, info[5], "remoteKind"));
    if (remote_kind > static_cast<int>(MemKind::kFile)) Throw(env, Code::kInvalidArg, "unknown remote memory kind");
  }
  plan.notify = std::move(notify);
  plan.segments.reserve(local.count());
  const bool check_remote = peer->peer->regions_known;
  if (++prepare_epoch_ == 0) {
    for (auto& [id, entry] : regions_) entry->prepare_mark = 0;
    prepare_epoch_ = 1;
  }
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < local.count(); ++i) {
    const Desc l = local.at(i);
    const Desc r = remote.at(i);
    if (l.length != r.length) {
      Throw(env, Code::kInvalidArg,
            "descriptor " + std::to_string(i) + ": local length " + std::to_string(l.length) +
                " differs from remote length " + std::to_string(r.length));
    }
    const RegionEntry* lr = FindLocal(l, i, &s);
    if (lr == nullptr) Throw(env, s);
    const RemoteRegion* rr = nullptr;
    if (check_remote) {
      rr = FindRemote(*peer, r, i, &s);
      if (rr == nullptr) Throw(env, s);
    }
    auto* entry = const_cast<RegionEntry*>(lr);
    if (entry->prepare_mark != prepare_epoch_) {
      entry->prepare_mark = prepare_epoch_;
      xfer->regions.push_back(entry);
    }
    plan.segments.push_back(Segment{l.address, r.address, l.length, r.device, &lr->region, rr});
    bytes += l.length;
  }
  plan.bytes = bytes;
  plan.remote_kind = remote_kind >= 0 ? static_cast<MemKind>(remote_kind) : plan.segments.front().local_region->kind;
  xfer->peer = peer;
  for (RegionEntry* entry : xfer->regions) ++entry->users;
  ++peer->users;
  xfer->id = next_xfer_id_++;
  if (xfer->id == 0) xfer->id = next_xfer_id_++;
  const uint32_t id = xfer->id;
  xfers_.emplace(id, std::move(xfer));

  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, id));
  result.Set(1u, Napi::Number::New(env, static_cast<double>(bytes)));
  return result;
}

XferEntry* NativeAgent::FindXfer(Napi::Env env, const Napi::Value& id) {
  auto it = xfers_.find(ToU32(env, id, "transfer id"));
  if (it == xfers_.end() || it->second->released) {
    Throw(env, Code::kInvalidArg, "the transfer was released");
  }
  return it->second.get();
}

uint32_t NativeAgent::PostById(Napi::Env env, uint32_t id) {
  CheckOpen(env);
  auto it = xfers_.find(id);
  if (it == xfers_.end() || it->second->released) Throw(env, Code::kInvalidArg, "the transfer was released");
  XferEntry* xfer = it->second.get();
  if (xfer->in_flight) {
    Throw(env, Code::kBusy, "the transfer is already in flight; wait for it or prepare another");
  }
  if (xfer->peer->forgotten) {
    Throw(env, Code::kUnknownPeer, "peer '" + xfer->peer->peer->name + "' was forgotten or reloaded");
  }
  if (xfer->peer->failed) Throw(env, xfer->peer->failure);
  return SubmitWithPlan(xfer, Command::kPost);
}

// The owner thread works on the plan until the token completes: the
// transfer is busy (no second post, release deferred) until FinishWithPlan.
uint32_t NativeAgent::SubmitWithPlan(XferEntry* xfer, Command::Type type) {
  xfer->in_flight = true;
  Command command{type};
  command.plan = xfer->plan.get();
  PendingOp pending;
  pending.xfer = xfer;
  return Submit(std::move(command), std::move(pending));
}

void NativeAgent::FinishWithPlan(XferEntry* xfer) {
  xfer->in_flight = false;
  if (xfer->released) DestroyXfer(xfer);
}

// cancel(token): the caller gave up on a post; the engine aborts it if it
// can. Its completion still arrives and unpins the memory.
Napi::Value NativeAgent::Cancel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t token = ToU32(env, info[0], "token");
  const PendingOp* op = pending_.Find(token);
  if (closing_ || closed_ || op == nullptr || op->xfer == nullptr) return env.Undefined();
  Command command{Command::kCancel};
  command.target = token;
  owner_->Submit(std::move(command));
  return env.Undefined();
}

// estimate(id) -> token; the completion carries the engine's prediction. The
// transfer counts as busy meanwhile: the owner thread may be preparing it.
Napi::Value NativeAgent::Estimate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  XferEntry* xfer = FindXfer(env, info[0]);
  if (xfer->in_flight) Throw(env, Code::kBusy, "the transfer is in flight");
  return Napi::Number::New(env, SubmitWithPlan(xfer, Command::kEstimate));
}

Napi::Value NativeAgent::Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto it = xfers_.find(ToU32(env, info[0], "transfer id"));
  if (it == xfers_.end() || it->second->released) return env.Undefined();
  XferEntry* xfer = it->second.get();
  xfer->released = true;
  if (!xfer->in_flight) DestroyXfer(xfer);
  return env.Undefined();
}

void NativeAgent::DestroyXfer(XferEntry* xfer) {
  for (RegionEntry* entry : xfer->regions) --entry->users;
  // State the engine made for the plan (read here only after a completion
  // event, so after the owner thread wrote it) is freed where it was made.
  if (xfer->plan->engine_state != nullptr && !closing_ && !closed_) {
    Command command{Command::kReleasePlan};
    command.plan = xfer->plan.release();
    owner_->Submit(std::move(command));
  }
  DropPeer(xfer->peer);
  xfers_.erase(xfer->id);
}

Napi::Value NativeAgent::Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  PeerEntry* peer = FindPeer(env, info[0]);
  Napi::Uint8Array message = ToBytes(env, info[1], "message");
  if (message.ByteLength() > kMaxNotificationBytes) {
    Throw(env, Code::kInvalidArg, "a notification holds at most 16 KiB");
  }
  if (peer->failed) Throw(env, peer->failure);
  PendingOp pending;
  pending.message =
      std::make_unique<std::vector<uint8_t>>(message.Data(), message.Data() + message.ByteLength());
  pending.notify_peer = peer;
  ++peer->users;
  Command command{Command::kNotify};
  command.peer = peer->peer.get();
  command.message = pending.message.get();
  return Napi::Number::New(env, Submit(std::move(command), std::move(pending)));
}

Napi::Value NativeAgent::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  closing_ = true;
  return Napi::Number::New(env, Submit(Command{Command::kClose}));
}

Napi::Value NativeAgent::Hold(const Napi::CallbackInfo& info) {
  ++holds_;
  UpdateRef(info.Env());
  return info.Env().Undefined();
}

Napi::Value NativeAgent::Unhold(const Napi::CallbackInfo& info) {
  if (holds_ > 0) --holds_;
  UpdateRef(info.Env());
  return info.Env().Undefined();
}

void NativeAgent::OnWake(uv_async_t* handle) {
  NativeAgent* self = static_cast<LoopHandles*>(handle->data)->agent;
  if (self == nullptr || self->owner_ == nullptr) return;
  napi_env env = self->env_;
  // No C++ exception may leave a libuv callback. An exception thrown by the
  // JS callback goes to process 'uncaughtException', as it would from any
  // other event source. When JS can no longer run (a worker stopping),
  // building the error must not abort the process
  // (NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS), and reporting it does nothing.
  // The poll phase of a turn has come: the next prepare callback opens a new
  // busy-poll window, however soon it runs.
  self->addon_->busy_poll.last_exit_ns = 0;
  Napi::HandleScope scope(env);
  try {
    self->DrainEvents(env);
  } catch (const Napi::Error& error) {
    Napi::Value value = error.Value();
    if (!value.IsEmpty()) napi_fatal_exception(env, value);
  } catch (...) {
  }
}

void NativeAgent::OnBeforePoll(uv_prepare_t* handle) {
  NativeAgent* self = static_cast<LoopHandles*>(handle->data)->agent;
  if (self == nullptr || self->owner_ == nullptr || self->busy_poll_ns_ == 0 || self->pending_.empty()) {
    return;
  }
  // Only when the loop is about to sleep: with timers due or handles
  // pending, polling here would only delay them.
  const int timeout_ms = uv_backend_timeout(handle->loop);
  if (timeout_ms == 0) return;
  KvxferAddon::BusyPollWindow& window = self->addon_->busy_poll;
  const uint64_t now = uv_hrtime();
  // The prepare callbacks of one loop turn run back to back: after a longer
  // gap (or after a batch was delivered, OnWake) this is a new turn, and its
  // window opens.
  if (now - window.last_exit_ns > kSameTurnGapNs) {
    window.deadline_ns = now + self->busy_poll_ns_;
    if (timeout_ms > 0) {
      // The timeout counts from the loop's time, taken at the start of the
      // turn: the next timer is due then, however long this turn has run.
      const uint64_t timer_due_ns = (uv_now(handle->loop) + static_cast<uint64_t>(timeout_ms)) * 1000000;
      window.deadline_ns = std::min(window.deadline_ns, timer_due_ns);
    }
  }
  const uint64_t deadline = std::min(window.deadline_ns, now + self->busy_poll_ns_);
  // Yielding between looks hands the core over to any thread that is ready
  // to run (the owner thread itself, where cores are fewer than threads).
  if (deadline <= now) {
    window.last_exit_ns = uv_hrtime();
    return;
  }
  while (!self->owner_->HasEvents() && uv_hrtime() < deadline) sched_yield();
  const bool found = self->owner_->HasEvents();
  // The loop has work now: agents after this one in the turn do not poll.
  if (found) window.deadline_ns = 0;
  window.last_exit_ns = uv_hrtime();
  self->busy_poll_stats_.polls += 1;
  self->busy_poll_stats_.found += found ? 1 : 0;
  self->busy_poll_stats_.ns += static_cast<double>(window.last_exit_ns - now);
}

// busyPollStats() -> [polls, found, ns]
Napi::Value NativeAgent::BusyPollStats(const Napi::CallbackInfo& info) {
  Napi::Float64Array out = Napi::Float64Array::New(info.Env(), 3);
  out[0] = busy_poll_stats_.polls;
  out[1] = busy_poll_stats_.found;
  out[2] = busy_poll_stats_.ns;
  return out;
}

// Delivers one batch to JS: successful completions as [token, durationNs]
// pairs in one Float64Array (no object per transfer), everything else as
// objects: { kind, token, error?, value?, peer?, data? }.
void NativeAgent::DrainEvents(Napi::Env env) {
  // Swapped with the owner thread's, so both keep their capacity.
  std::vector<Event>& events = events_scratch_;
  std::vector<Completion>& completions = completions_scratch_;
  events.clear();
  completions.clear();
  owner_->TakeEvents(&events, &completions);
  if (events.empty() && completions.empty()) return;
  // Every completion is reported; JS ignores a token it no longer waits for.
  Napi::Float64Array done = Napi::Float64Array::New(env, completions.size() * 2);
  double* pairs = done.Data();
  for (const Completion& c : completions) {
    PendingOp op;
    if (pending_.Take(c.token, &op)) {
      if (op.xfer != nullptr) FinishWithPlan(op.xfer);
      if (op.notify_peer != nullptr) DropPeer(op.notify_peer);
    }
    *pairs++ = c.token;
    *pairs++ = static_cast<double>(c.duration_ns);
  }
  Napi::Array others = Napi::Array::New(env);
  bool closed = false;
  for (Event& e : events) {
    HandleEvent(env, e, others);
    closed = closed || e.type == Event::kClosed;
  }
  Napi::Function callback = on_events_.Value();
  // A closed agent lets go of its handles before calling out, so that they
  // close even if the callback throws.
  if (closed) FinishClose();
  UpdateRef(env);
  callback.MakeCallback(env.Global(), {done, others}, *async_context_);
}

void NativeAgent::HandleEvent(Napi::Env env, Event& e, Napi::Array others) {
  auto push = [&](Napi::Object o) { others.Set(others.Length(), o); };
  auto op_result = [&](uint32_t token, const Status& status) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("kind", Napi::Number::New(env, kEventOperation));
    o.Set("token", Napi::Number::New(env, token));
    if (!status.ok()) o.Set("error", MakeError(env, status).Value());
    return o;
  };
  PendingOp pending;
  if (e.token != 0) pending_.Take(e.token, &pending);
  switch (e.type) {
    case Event::kStarted:
      if (e.status.ok()) metadata_ = std::move(e.data);
      push(op_result(e.token, e.status));
      break;
    case Event::kClosed:
      push(op_result(e.token, e.status));
      break;
    case Event::kRegistered: {
      Napi::Object o = op_result(e.token, e.status);
      if (pending.region != nullptr) {
        if (e.status.ok()) {
          metadata_ = std::move(e.data);
          pending.region->state = RegionEntry::kRegistered;
          o.Set("value", Napi::BigInt::New(env, static_cast<uint64_t>(pending.region->region.address)));
          RebuildRegionIndex();
        } else {
          regions_.erase(pending.region->id);
        }
      }
      push(o);
      break;
    }
    case Event::kDeregistered:
      metadata_ = std::move(e.data);
      if (pending.region != nullptr) regions_.erase(pending.region->id);
      push(op_result(e.token, e.status));
      break;
    case Event::kPeerLoaded: {
      Napi::Object o = op_result(e.token, e.status);
      if (e.status.ok()) {
        auto entry = std::make_unique<PeerEntry>();
        entry->peer.reset(e.peer);
        const std::string& name = e.peer->name;
        auto old = peers_by_name_.find(name);
        if (old != peers_by_name_.end()) {
          // Newer metadata replaces the old; transfers prepared against the
          // old one keep it alive until they are released.
          PeerEntry* previous = old->second;
          peers_by_name_.erase(old);
          previous->forgotten = true;
          DropPeer(previous);
        }
        peers_by_name_[name] = entry.get();
        o.Set("value", name);
        peers_.emplace(e.peer, std::move(entry));
      }
      push(o);
      break;
    }
    case Event::kPeerDestroyed:
      peers_.erase(e.peer);
      break;
    case Event::kOperationDone:
      if (pending.xfer != nullptr) FinishWithPlan(pending.xfer);
      if (pending.notify_peer != nullptr) DropPeer(pending.notify_peer);
      {
        Napi::Object o = op_result(e.token, e.status);
        o.Set("value", Napi::Number::New(env, static_cast<double>(e.duration_ns)));
        if (e.has_telemetry) {
          Napi::Object t = Napi::Object::New(env);
          t.Set("postUs", Napi::Number::New(env, static_cast<double>(e.telemetry.post_us)));
          t.Set("transferUs", Napi::Number::New(env, static_cast<double>(e.telemetry.transfer_us)));
          t.Set("bytes", Napi::Number::New(env, static_cast<double>(e.telemetry.bytes)));
          t.Set("descriptors", Napi::Number::New(env, static_cast<double>(e.telemetry.descriptors)));
          o.Set("telemetry", t);
        }
        push(o);
      }
      break;
    case Event::kEstimated: {
      if (pending.xfer != nullptr) FinishWithPlan(pending.xfer);
      Napi::Object o = op_result(e.token, e.status);
      if (e.status.ok()) {
        Napi::Object v = Napi::Object::New(env);
        v.Set("durationUs", Napi::Number::New(env, static_cast<double>(e.estimate.duration_us)));
        v.Set("errorMarginUs", Napi::Number::New(env, static_cast<double>(e.estimate.error_margin_us)));
        v.Set("method", Napi::String::New(env, e.estimate.method == 0 ? "analytical" : "unknown"));
        o.Set("value", v);
      }
      push(o);
      break;
    }
    case Event::kNotification: {
      Napi::Object o = Napi::Object::New(env);
      o.Set("kind", Napi::Number::New(env, kEventNotification));
      o.Set("peer", e.peer_name);
      o.Set("data", Napi::Buffer<uint8_t>::Copy(env, e.data.data(), e.data.size()));
      push(o);
      break;
    }
    case Event::kPeerFailed: {
      auto it = peers_.find(e.peer);
      if (it == peers_.end()) break;
      it->second->failed = true;
      it->second->failure = e.status;
      Napi::Object o = Napi::Object::New(env);
      o.Set("kind", Napi::Number::New(env, kEventPeerFailed));
      o.Set("peer", e.peer->name);
      o.Set("error", MakeError(env, e.status).Value());
      push(o);
      break;
    }
  }
}

// close() finished: the owner thread has stopped by itself.
void NativeAgent::FinishClose() {
  owner_->Join();
  owner_.reset();
  ReleaseAll();
}

}  // namespace kvxfer
