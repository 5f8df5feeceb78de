#include "agent/agent.h"

#include <algorithm>
#include <utility>

#include "addon.h"
#include "agent/convert.h"
#include "agent/deliver.h"
#include "agent/plan_builder.h"
#include "ucx/ucx_defaults.h"

namespace kvxfer {

namespace {

// A registered JS buffer stays alive as long as its region.
class JsPin : public Pin {
 public:
  explicit JsPin(Napi::Value value) : ref_(Napi::Persistent(value)) {}

 private:
  Napi::Reference<Napi::Value> ref_;
};

Napi::Array Pair(Napi::Env env, uint32_t first, double second) {
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, first));
  result.Set(1u, Napi::Number::New(env, second));
  return result;
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
                         InstanceMethod<&NativeAgent::PostAll>("postAll"),
                         InstanceMethod<&NativeAgent::BusyPollStats>("busyPollStats"),
                     });
}

// NativeAgent(name, options, onEvents)
NativeAgent::NativeAgent(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeAgent>(info) {
  Napi::Env env = info.Env();
  addon_ = env.GetInstanceData<KvxferAddon>();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsObject() || !info[2].IsFunction()) {
    Throw(env, Code::kInvalidArg, "NativeAgent(name, options, onEvents)");
  }
  name_ = info[0].As<Napi::String>().Utf8Value();
  if (name_.empty() || name_.size() > limits::kMaxAgentNameBytes || name_.find('\0') != std::string::npos) {
    Throw(env, Code::kInvalidArg, "an agent name must be 1 to 255 bytes of UTF-8 without NUL");
  }
  AgentConfig config = ToAgentConfig(env, info[1].As<Napi::Object>());
  engine_name_ = config.engine.engine;
  share_pages_ = engine_name_ == "ucx" && config.engine.share_registered_memory &&
                 CopiesAcrossProcesses(config.engine.transports);
  busy_poll_ = loop::BusyPoll(&addon_->busy_poll, config.busy_poll_ns);
  DefinePostFunction(info.This().As<Napi::Object>());
  OpenLoopHandles(env);
  try {
    on_events_ = Napi::Persistent(info[2].As<Napi::Function>());
    async_context_ = std::make_unique<Napi::AsyncContext>(env, "kvxfer agent");
    env_ = env;
    uv_async_t* wake = wake_.get();
    owner_ = std::make_unique<OwnerThread>(name_, std::move(config.engine), [wake] { uv_async_send(wake); });
  } catch (...) {
    // No destructor runs for a constructor that throws; the handles close
    // themselves with their members, and must not call back into this.
    env_hold_->Detach();
    throw;
  }
}

void NativeAgent::OpenLoopHandles(Napi::Env env) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    Throw(env, Code::kEngine, "no event loop to deliver completions on");
  }
  env_hold_ = loop::EnvHold::Create(env, &NativeAgent::OnEnvTeardown, this);
  if (env_hold_ == nullptr) Throw(env, Code::kEngine, "could not register the agent's cleanup hook");
  const bool opened =
      wake_.Open(env_hold_, this, [&](uv_async_t* h) { return uv_async_init(loop, h, &NativeAgent::OnWake); }) &&
      before_poll_.Open(env_hold_, this, [&](uv_prepare_t* h) {
        if (uv_prepare_init(loop, h) != 0) return -1;
        return uv_prepare_start(h, &NativeAgent::OnBeforePoll);
      });
  if (!opened) {
    env_hold_->Detach();
    Throw(env, Code::kEngine, "could not create the agent's event-loop handles");
  }
  // Idle, the agent keeps nothing alive (UpdateRef).
  wake_.SetRef(false);
  before_poll_.SetRef(false);
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
        env, fn, holder, [](napi_env, void* data, void*) { delete static_cast<std::shared_ptr<AgentLink>*>(data); },
        nullptr, nullptr);
  }
  if (status != napi_ok) {
    delete holder;
    Throw(env, Code::kEngine, "could not create the agent's post function");
  }
  self.DefineProperty(Napi::PropertyDescriptor::Value("post", Napi::Value(env, fn), napi_default));
}

void NativeAgent::CheckOpen(Napi::Env env) const {
  if (!open()) Throw(env, Code::kClosed, "agent '" + name_ + "' is closed");
}

template <typename C>
uint32_t NativeAgent::Submit(C command, PendingOp pending) {
  const uint32_t token = tables_.AddPending(std::move(pending));
  command.token = token;
  owner_->Submit(std::move(command));
  UpdateRef();
  return token;
}

Napi::Value NativeAgent::Start(const Napi::CallbackInfo& info) {
  CheckOpen(info.Env());
  if (state_ == State::kStarted) Throw(info.Env(), Code::kBusy, "agent already started");
  state_ = State::kStarted;
  return Napi::Number::New(info.Env(), Submit(cmd::Start{}));
}

// -> [token, region id]; the completion carries the region's address.
Napi::Value NativeAgent::SubmitRegister(RegionEntry* entry, bool allocate, bool check_memory_type) {
  const uint32_t token = allocate ? Submit(cmd::Allocate{0, &entry->region}, entry)
                                  : Submit(cmd::Register{0, &entry->region, check_memory_type}, entry);
  return Pair(Env(), token, entry->id);
}

// registerMemory(bytes: Uint8Array, movable: boolean): JS memory, kept
// alive by the region. Movable: no other thread writes it (not a
// SharedArrayBuffer), so its whole pages may move into shared memory
// (shared_pages.h), here on the JS thread, which is not writing it either.
Napi::Value NativeAgent::RegisterMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  Napi::Uint8Array bytes = ToBytes(env, info[0], "memory");
  if (bytes.ByteLength() == 0) Throw(env, Code::kInvalidArg, "cannot register empty (or detached) memory");
  const bool movable = info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  RegionEntry* entry = tables_.regions().Add();
  entry->region.address = reinterpret_cast<uint64_t>(bytes.Data());
  entry->region.length = bytes.ByteLength();
  entry->pin = std::make_unique<JsPin>(info[0]);
  entry->host = HostRegistration::Add(entry->region.address, entry->region.length, share_pages_ && movable);
  entry->region.shared = entry->host->shared();
  return SubmitRegister(entry, false);
}

// registerAddress(kind, address, length, device): memory the caller owns,
// such as a CUDA allocation; or, for kind FILE, a file: address is the
// offset and device the file descriptor.
Napi::Value NativeAgent::RegisterAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  const MemKind kind = ToMemKind(env, info[0], "memory kind");
  const uint64_t address = ToU64(env, info[1], "address");
  const uint64_t length = ToU64(env, info[2], "length");
  const uint32_t device = ToU32(env, info[3], "device");
  if (address == 0 && kind != MemKind::kFile) Throw(env, Code::kInvalidArg, "address must not be 0");
  if (length == 0) Throw(env, Code::kInvalidArg, "length must be greater than 0");
  if (length - 1 > UINT64_MAX - address) Throw(env, Code::kInvalidArg, "address + length wraps around");
  RegionEntry* entry = tables_.regions().Add();
  entry->region.address = address;
  entry->region.length = length;
  entry->region.kind = kind;
  entry->region.device = device;
  if (kind == MemKind::kDram) entry->host = HostRegistration::Add(address, length, false);
  return SubmitRegister(entry, false, true);
}

// allocate(length): host memory of any size, allocated by the engine where
// peers reach it fastest.
Napi::Value NativeAgent::Allocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  const uint64_t length = ToU64(env, info[0], "length");
  if (length == 0) Throw(env, Code::kInvalidArg, "length must be greater than 0");
  RegionEntry* entry = tables_.regions().Add();
  entry->region.length = length;
  return SubmitRegister(entry, true);
}

Napi::Value NativeAgent::Deregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  RegionEntry* entry = nullptr;
  ThrowIfError(env, tables_.regions().BeginDeregister(ToU32(env, info[0], "region id"), &entry));
  return Napi::Number::New(env, Submit(cmd::Deregister{0, &entry->region}, entry));
}

// view(id, offset, length): a Buffer over allocate()d memory, no copy. The
// Buffer keeps the memory mapped even after the region is deregistered or
// the agent closed.
Napi::Value NativeAgent::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t id = ToU32(env, info[0], "region id");
  const uint64_t offset = ToU64(env, info[1], "offset");
  const uint64_t length = ToU64(env, info[2], "length");
  RegionEntry* entry = nullptr;
  ThrowIfError(env, tables_.regions().FindRegistered(id, &entry));
  const LocalRegion& region = entry->region;
  if (!region.memory) Throw(env, Code::kInvalidArg, "view() is only available on memory from allocate()");
  if (offset > region.length || length > region.length - offset) {
    Throw(env, Code::kOutOfRange,
          "view of " + std::to_string(length) + " bytes at offset " + std::to_string(offset) +
              " runs past the region's " + std::to_string(region.length) + " bytes");
  }
  auto* hold = new std::shared_ptr<void>(region.memory);
  auto* data = reinterpret_cast<uint8_t*>(region.address) + offset;
  return Napi::Buffer<uint8_t>::New(
      env, data, static_cast<size_t>(length), [](Napi::Env, uint8_t*, std::shared_ptr<void>* h) { delete h; }, hold);
}

Napi::Value NativeAgent::Metadata(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  if (info.Length() == 0 || info[0].IsUndefined()) {
    return Napi::Buffer<uint8_t>::Copy(env, metadata_.data(), metadata_.size());
  }
  // Partial metadata: only these regions (ids), each registered.
  if (!info[0].IsArray()) Throw(env, Code::kInvalidArg, "regions must be an array of regions");
  Napi::Array ids = info[0].As<Napi::Array>();
  std::vector<const LocalRegion*> regions;
  for (uint32_t i = 0; i < ids.Length(); ++i) {
    RegionEntry* entry = nullptr;
    ThrowIfError(env, tables_.regions().FindRegistered(ids.Get(i).As<Napi::Number>().Uint32Value(), &entry));
    if (std::find(regions.begin(), regions.end(), &entry->region) == regions.end()) regions.push_back(&entry->region);
  }
  std::vector<uint8_t> narrowed;
  ThrowIfError(env, engine_name_ == "nixl" ? NarrowNixlMetadata(metadata_, regions, &narrowed)
                                           : NarrowUcxMetadata(metadata_, regions, &narrowed));
  return Napi::Buffer<uint8_t>::Copy(env, narrowed.data(), narrowed.size());
}

Napi::Value NativeAgent::Engine(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), engine_name_);
}

Napi::Value NativeAgent::LoadPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  Napi::Uint8Array blob = ToBytes(env, info[0], "metadata");
  cmd::LoadPeer command{0, std::vector<uint8_t>(blob.Data(), blob.Data() + blob.ByteLength())};
  return Napi::Number::New(env, Submit(std::move(command)));
}

PeerEntry* NativeAgent::FindPeer(Napi::Env env, const Napi::Value& name) {
  if (!name.IsString()) Throw(env, Code::kInvalidArg, "peer must be a string (the peer's agent name)");
  PeerEntry* entry = nullptr;
  ThrowIfError(env, tables_.FindPeer(name.As<Napi::String>().Utf8Value(), &entry));
  return entry;
}

Napi::Value NativeAgent::ForgetPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  if (info[0].IsString() && tables_.ClearDeparted(info[0].As<Napi::String>().Utf8Value())) return env.Undefined();
  PeerEntry* entry = FindPeer(env, info[0]);
  Status failure;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsString()) Throw(env, Code::kInvalidArg, "reason must be a string");
    failure = Status::Error(Code::kPeerUnreachable, "peer '" + entry->name() + "' left: " +
                                                       info[1].As<Napi::String>().Utf8Value());
  }
  // The owner thread stops counting it as the name's agent now, though its
  // connection may stay up while prepared transfers hold it.
  owner_->Submit(cmd::ForgetName{entry->peer.get(), failure});
  tables_.ForgetPeer(entry, std::move(failure));
  return env.Undefined();
}

void NativeAgent::DestroyPeer(Peer* peer) {
  // Closing: the engine's shutdown tears every connection down.
  if (open()) owner_->Submit(cmd::DestroyPeer{peer});  // reported by ev::PeerDestroyed, no promise
}

void NativeAgent::DropRemoteRegions(Peer* peer, std::vector<std::unique_ptr<RemoteRegion>> regions) {
  // Closing: the engine's shutdown frees every key.
  if (open()) owner_->Submit(cmd::DropRemoteRegions{peer, std::move(regions)});
}

void NativeAgent::ReleasePlan(std::unique_ptr<Plan> plan) {
  // Closing: the engine's shutdown frees every plan's state.
  if (open()) owner_->Submit(cmd::ReleasePlan{std::move(plan)});
}

// prepare(op, local, remote, peer, notify?, remoteKind?) -> [id, bytes]. Every
// check happens here, once; post() then does no per-descriptor work on this
// thread.
Napi::Value NativeAgent::Prepare(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  PlanRequest request;
  request.op = ToXferOp(env, info[0]);
  Napi::Uint8Array local = ToBytes(env, info[1], "local descriptor list");
  Napi::Uint8Array remote = ToBytes(env, info[2], "remote descriptor list");
  PeerEntry* peer = FindPeer(env, info[3]);
  ThrowIfError(env, peer->Usable());
  if (info.Length() > 4 && !info[4].IsUndefined() && !info[4].IsNull()) {
    Napi::Uint8Array message = ToBytes(env, info[4], "notify");
    request.notify.assign(message.Data(), message.Data() + message.ByteLength());
  }
  if (info.Length() > 5 && !info[5].IsUndefined()) request.remote_kind = ToMemKind(env, info[5], "remote memory kind");
  request.local = local.Data();
  request.local_length = local.ByteLength();
  request.remote = remote.Data();
  request.remote_length = remote.ByteLength();
  auto xfer = std::make_unique<XferEntry>();
  ThrowIfError(env, BuildPlan(request, tables_.regions(), *peer, xfer.get()));
  const XferEntry* added = tables_.AddXfer(std::move(xfer));
  return Pair(env, added->id, static_cast<double>(added->plan->bytes));
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

uint32_t NativeAgent::PostById(Napi::Env env, uint32_t id) {
  CheckOpen(env);
  XferEntry* xfer = nullptr;
  ThrowIfError(env, tables_.FindXfer(id, &xfer));
  ThrowIfError(env, AgentTables::CheckPostable(*xfer));
  return SubmitWithPlan(xfer, false);
}

// postAll(ids: Uint32Array) -> tokens: Uint32Array, in the same order. All
// or nothing: every transfer is checked before any is handed over, and the
// owner thread receives them as one burst (SubmitAll).
Napi::Value NativeAgent::PostAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  if (info.Length() < 1 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    Throw(env, Code::kInvalidArg, "postAll(transferIds: Uint32Array)");
  }
  Napi::Uint32Array ids = info[0].As<Napi::Uint32Array>();
  const size_t count = ids.ElementLength();
  std::vector<XferEntry*> xfers(count);
  for (size_t i = 0; i < count; ++i) {
    ThrowIfError(env, tables_.FindXfer(ids[i], &xfers[i]));
    ThrowIfError(env, AgentTables::CheckPostable(*xfers[i]));
  }
  std::vector<XferEntry*> sorted(xfers);
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    Throw(env, Code::kInvalidArg, "a transfer appears twice in one postAll (one post of it would still be in flight)");
  }
  Napi::Uint32Array tokens = Napi::Uint32Array::New(env, count);
  std::vector<Command> commands;
  commands.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    tables_.MarkBusy(xfers[i]);
    const uint32_t token = tables_.AddPending(xfers[i]);
    tokens[i] = token;
    commands.emplace_back(cmd::Post{token, xfers[i]->plan.get()});
  }
  owner_->SubmitAll(&commands);
  UpdateRef();
  return tokens;
}

// The owner thread works on the plan until the token completes: the
// transfer is busy (no second post, release deferred) until then.
uint32_t NativeAgent::SubmitWithPlan(XferEntry* xfer, bool estimate) {
  tables_.MarkBusy(xfer);
  return estimate ? Submit(cmd::Estimate{0, xfer->plan.get()}, xfer) : Submit(cmd::Post{0, xfer->plan.get()}, xfer);
}

// cancel(token): the caller gave up on a post; the engine aborts it if it
// can. Its completion still arrives and unpins the memory.
Napi::Value NativeAgent::Cancel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t token = ToU32(env, info[0], "token");
  const PendingOp* op = tables_.pending().Find(token);
  if (open() && op != nullptr && std::holds_alternative<XferEntry*>(*op)) owner_->Submit(cmd::Cancel{token});
  return env.Undefined();
}

// estimate(id) -> token; the completion carries the engine's prediction. The
// transfer counts as busy meanwhile: the owner thread may be preparing it.
Napi::Value NativeAgent::Estimate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  XferEntry* xfer = nullptr;
  ThrowIfError(env, tables_.FindXfer(ToU32(env, info[0], "transfer id"), &xfer));
  if (xfer->state == XferEntry::State::kBusy) Throw(env, Code::kBusy, "the transfer is in flight");
  return Napi::Number::New(env, SubmitWithPlan(xfer, true));
}

Napi::Value NativeAgent::Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  tables_.ReleaseXfer(ToU32(env, info[0], "transfer id"));
  return env.Undefined();
}

Napi::Value NativeAgent::Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  PeerEntry* peer = FindPeer(env, info[0]);
  Napi::Uint8Array message = ToBytes(env, info[1], "message");
  if (message.ByteLength() > limits::kMaxNotificationBytes) {
    Throw(env, Code::kInvalidArg, "a notification holds at most 16 KiB");
  }
  ThrowIfError(env, peer->Usable());
  PendingNotify pending{peer, std::make_unique<std::vector<uint8_t>>(message.Data(), message.Data() + message.ByteLength())};
  const std::vector<uint8_t>* bytes = pending.message.get();
  tables_.HoldPeer(peer);
  return Napi::Number::New(env, Submit(cmd::Notify{0, peer->peer.get(), bytes}, std::move(pending)));
}

Napi::Value NativeAgent::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  state_ = State::kClosing;
  return Napi::Number::New(env, Submit(cmd::Close{}));
}

Napi::Value NativeAgent::Hold(const Napi::CallbackInfo& info) {
  ++holds_;
  UpdateRef();
  return info.Env().Undefined();
}

Napi::Value NativeAgent::Unhold(const Napi::CallbackInfo& info) {
  if (holds_ > 0) --holds_;
  UpdateRef();
  return info.Env().Undefined();
}

// busyPollStats() -> [polls, found, ns, contended]
Napi::Value NativeAgent::BusyPollStats(const Napi::CallbackInfo& info) {
  const loop::BusyPollStats& stats = busy_poll_.stats();
  Napi::Float64Array out = Napi::Float64Array::New(info.Env(), 4);
  out[0] = stats.polls;
  out[1] = stats.found;
  out[2] = stats.ns;
  out[3] = stats.contended;
  return out;
}

// The event loop stays alive while operations are pending or JS waits for
// something native (hold); an idle agent keeps nothing alive.
void NativeAgent::UpdateRef() {
  const bool want = state_ != State::kClosed && wake_.is_open() && (!tables_.pending().empty() || holds_ > 0);
  if (want == loop_ref_) return;
  loop_ref_ = want;
  wake_.SetRef(want);
}

void NativeAgent::OnWake(uv_async_t* handle) {
  auto* self = loop::LoopHandle<uv_async_t>::User<NativeAgent>(handle);
  if (self->owner_ == nullptr) return;
  napi_env env = self->env_;
  self->busy_poll_.BatchDelivered();
  Napi::HandleScope scope(env);
  // No C++ exception may leave a libuv callback. An exception thrown by the
  // JS callback goes to process 'uncaughtException', as it would from any
  // other event source. When JS can no longer run (a worker stopping),
  // building the error must not abort the process
  // (NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS), and reporting it does nothing.
  try {
    self->DrainEvents(env);
  } catch (const Napi::Error& error) {
    Napi::Value value = error.Value();
    if (!value.IsEmpty()) napi_fatal_exception(env, value);
  } catch (...) {
  }
}

void NativeAgent::OnBeforePoll(uv_prepare_t* handle) {
  auto* self = loop::LoopHandle<uv_prepare_t>::User<NativeAgent>(handle);
  if (self->owner_ == nullptr || !self->busy_poll_.enabled() || self->tables_.pending().empty()) return;
  self->busy_poll_.BeforeLoopSleeps(handle->loop, *self->owner_);
}

// Delivers one batch to JS (deliver.h).
void NativeAgent::DrainEvents(Napi::Env env) {
  // Swapped with the owner thread's, so both keep their capacity.
  std::vector<Event>& events = events_scratch_;
  std::vector<Completion>& completions = completions_scratch_;
  events.clear();
  completions.clear();
  owner_->TakeEvents(&events, &completions);
  if (events.empty() && completions.empty()) return;
  BatchTranslator translate(env, &tables_, &metadata_);
  Napi::Float64Array done = translate.Completions(completions);
  bool closed = false;
  Napi::Array others = translate.Others(events, &closed);
  Napi::Function callback = on_events_.Value();
  // A closed agent lets go of its handles before calling out, so that they
  // close even if the callback throws.
  if (closed) FinishClose();
  UpdateRef();
  callback.MakeCallback(env.Global(), {done, others}, *async_context_);
}

// close() finished: the owner thread has stopped by itself.
void NativeAgent::FinishClose() {
  owner_->Join();
  owner_.reset();
  ReleaseAll();
}

// The environment is going away (process exit, a worker ending) with the
// agent still open.
void NativeAgent::OnEnvTeardown(void* agent) { static_cast<NativeAgent*>(agent)->Teardown(); }

// Stops the owner thread without going back to JS: for an agent the
// environment is tearing down or the garbage collector is reclaiming.
void NativeAgent::Teardown() {
  if (state_ == State::kClosed) return;
  state_ = State::kClosing;
  if (owner_ != nullptr) {
    owner_->Submit(cmd::Close{0});
    owner_->Join();
    owner_.reset();
  }
  ReleaseAll();
  async_context_.reset();
}

// The owner thread has stopped (it signals the wake handle, so only now)
// and the engine released everything: close the loop handles, and drop the
// tables and with them the references that pinned JS memory.
void NativeAgent::ReleaseAll() {
  state_ = State::kClosed;
  if (env_hold_ != nullptr) env_hold_->Detach();
  env_hold_.reset();
  wake_.Close();
  before_poll_.Close();
  loop_ref_ = false;
  on_events_.Reset();
  tables_.Clear();
}

}  // namespace kvxfer
