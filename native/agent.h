// The native Agent: argument checks, region and peer tables, descriptor
// validation, and the bridge between promises (tokens) and the owner thread.
// Everything here runs on the JS thread.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "descs.h"
#include "engine.h"
#include "progress.h"

namespace kvxfer {

class KvxferAddon;
class NativeAgent;

struct RegionEntry {
  enum State : uint8_t { kRegistering, kRegistered, kDeregistering };
  uint32_t id = 0;
  State state = kRegistering;
  LocalRegion region;
  Napi::Reference<Napi::Value> keepalive;  // the JS memory the region covers
  uint32_t users = 0;                          // unreleased transfers using it
  uint32_t prepare_mark = 0;
};

struct PeerEntry {
  std::unique_ptr<Peer> peer;
  // Transfers and notifications that use the peer, plus one while it is in
  // the name table. The connection is torn down when this reaches zero.
  uint32_t users = 1;
  bool forgotten = false;
  bool failed = false;
  Status failure;
};

struct XferEntry {
  uint32_t id = 0;
  std::unique_ptr<Plan> plan = std::make_unique<Plan>();
  PeerEntry* peer = nullptr;
  std::vector<RegionEntry*> regions;
  bool in_flight = false;
  bool released = false;
};

// What a token's completion must settle on the JS side.
struct PendingOp {
  XferEntry* xfer = nullptr;
  RegionEntry* region = nullptr;
  PeerEntry* notify_peer = nullptr;
  std::unique_ptr<std::vector<uint8_t>> message;
};

// Operations waiting for completion, by token. A token is a slot number,
// reused once its completion has been delivered: JS forgets a token in the
// very call that delivers it, so a reused token never meets a stale one, and
// the per-transfer lookups index a vector instead of hashing and allocating.
class PendingTable {
 public:
  PendingTable() { slots_.emplace_back(); }
  uint32_t Add(PendingOp op);
  // Moves the operation out and frees its token; false if it is not pending.
  bool Take(uint32_t token, PendingOp* out);
  const PendingOp* Find(uint32_t token) const;
  bool empty() const { return count_ == 0; }
  void clear();

 private:
  struct Slot {
    bool live = false;
    PendingOp op;
  };
  std::vector<Slot> slots_;  // slot 0 is never a token
  std::vector<uint32_t> free_;
  size_t count_ = 0;
};

// What the per-agent functions below hold instead of the agent itself: they
// can outlive it (the garbage collector finalizes in any order), and then
// find it gone rather than dangling.
struct AgentLink {
  NativeAgent* agent = nullptr;
};

// The agent's libuv handles, closed with the agent. Their close callbacks are
// code in this library, which a worker ending with an agent open unloads
// right after its cleanup hooks: an async cleanup hook holds the environment
// until the handles are closed. Outlives the agent until then.
struct LoopHandles {
  uv_async_t wake;
  // Runs before the loop blocks for I/O. With operations pending the JS
  // thread polls for their completions first, for up to busyPollUs: a
  // completion found then needs no wake-up of a sleeping thread, which costs
  // tens of microseconds on a VM (longer than a 1 MiB copy takes).
  uv_prepare_t before_poll;
  NativeAgent* agent = nullptr;  // null once the agent let go
  napi_async_cleanup_hook_handle hook = nullptr;
  int open = 0;
};

class NativeAgent : public Napi::ObjectWrap<NativeAgent> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit NativeAgent(const Napi::CallbackInfo& info);
  ~NativeAgent() override;

 private:
  static void OnEnvTeardown(napi_async_cleanup_hook_handle hook, void* handles);
  static void OnWake(uv_async_t* handle);
  static void OnBeforePoll(uv_prepare_t* handle);
  static void OnHandleClosed(uv_handle_t* handle);
  void OpenLoopHandles(Napi::Env env);

  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value RegisterMemory(const Napi::CallbackInfo& info);
  Napi::Value RegisterAddress(const Napi::CallbackInfo& info);
  Napi::Value Allocate(const Napi::CallbackInfo& info);
  Napi::Value Deregister(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Metadata(const Napi::CallbackInfo& info);
  Napi::Value LoadPeer(const Napi::CallbackInfo& info);
  Napi::Value ForgetPeer(const Napi::CallbackInfo& info);
  Napi::Value Prepare(const Napi::CallbackInfo& info);
  // post(id) is an own function of each agent object, not a prototype
  // method: it reaches the agent through its data pointer, without
  // napi_unwrap's private-symbol lookup, on the one call made per transfer.
  static napi_value PostFast(napi_env env, napi_callback_info info);
  void DefinePostFunction(Napi::Object self);
  uint32_t PostById(Napi::Env env, uint32_t id);
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value Notify(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Hold(const Napi::CallbackInfo& info);
  Napi::Value Unhold(const Napi::CallbackInfo& info);
  Napi::Value Engine(const Napi::CallbackInfo& info);
  Napi::Value Cancel(const Napi::CallbackInfo& info);
  Napi::Value Estimate(const Napi::CallbackInfo& info);
  Napi::Value BusyPollStats(const Napi::CallbackInfo& info);

  void CheckOpen(Napi::Env env) const;
  uint32_t Submit(Command command, PendingOp pending = PendingOp());
  RegionEntry* NewRegion(Napi::Env env);
  Napi::Value SubmitRegister(RegionEntry* entry, Command::Type type);
  PeerEntry* FindPeer(Napi::Env env, const Napi::Value& name);
  XferEntry* FindXfer(Napi::Env env, const Napi::Value& id);
  void DropPeer(PeerEntry* entry);
  void DestroyXfer(XferEntry* xfer);
  uint32_t SubmitWithPlan(XferEntry* xfer, Command::Type type);
  void FinishWithPlan(XferEntry* xfer);
  void RebuildRegionIndex();
  const RegionEntry* FindLocal(const Desc& d, uint32_t i, Status* error) const;
  const RemoteRegion* FindRemote(const PeerEntry& peer, const Desc& d, uint32_t i,
                                 Status* error) const;

  void DrainEvents(Napi::Env env);
  void HandleEvent(Napi::Env env, Event& event, Napi::Array others);
  void UpdateRef(Napi::Env env);
  void FinishClose();
  void Teardown();
  void ReleaseAll();
  void CloseLoopHandles();

  std::shared_ptr<AgentLink> link_;
  std::string name_;
  std::string engine_name_;
  KvxferAddon* addon_ = nullptr;
  // The owner thread wakes the JS thread through loop_->wake. libuv runs its
  // callback at most once per event-loop turn however often it is signalled,
  // so a burst of completions (each reposting work) cannot starve timers and
  // I/O: one batch per turn, then the loop goes round.
  LoopHandles* loop_ = nullptr;
  uint64_t busy_poll_ns_ = 0;
  // What the busy poll did, for stats(): tells whether busyPollUs pays.
  struct {
    double polls = 0;
    double found = 0;
    double ns = 0;
  } busy_poll_stats_;
  Napi::FunctionReference on_events_;
  std::unique_ptr<Napi::AsyncContext> async_context_;
  std::unique_ptr<OwnerThread> owner_;
  napi_env env_ = nullptr;
  bool started_ = false;
  bool closing_ = false;
  bool closed_ = false;

  uint32_t next_region_id_ = 1;
  uint32_t next_xfer_id_ = 1;
  uint32_t prepare_epoch_ = 0;

  std::unordered_map<uint32_t, std::unique_ptr<RegionEntry>> regions_;
  std::vector<RegionEntry*> region_index_;  // registered regions by address
  std::unordered_map<Peer*, std::unique_ptr<PeerEntry>> peers_;
  std::unordered_map<std::string, PeerEntry*> peers_by_name_;
  std::unordered_map<uint32_t, std::unique_ptr<XferEntry>> xfers_;
  PendingTable pending_;
  std::vector<Event> events_scratch_;
  std::vector<Completion> completions_scratch_;

  std::vector<uint8_t> metadata_;  // the latest the owner thread reported

  uint32_t holds_ = 0;
  bool loop_ref_ = false;
};

}  // namespace kvxfer
