// NativeAgent: the JS class behind lib/'s Agent, a thin method table. Each
// method converts its arguments (convert.h), asks the tables (tables.h) or
// the plan builder (plan_builder.h), and hands a command to the agent's owner
// thread (progress.h), answering with a token that the completion settles.
// Completions come back through the wake handle, one batch per loop turn
// (deliver.h). Everything here runs on the JS thread.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agent/tables.h"
#include "commands.h"
#include "loop/busy_poll.h"
#include "loop/uv_handle.h"
#include "progress.h"

namespace kvxfer {

class KvxferAddon;
class NativeAgent;

// What the per-agent post function holds instead of the agent itself: it can
// outlive the agent (the garbage collector finalizes in any order), and then
// finds it gone rather than dangling.
struct AgentLink {
  NativeAgent* agent = nullptr;
};

class NativeAgent : public Napi::ObjectWrap<NativeAgent>, private TableEvents {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit NativeAgent(const Napi::CallbackInfo& info);
  ~NativeAgent() override;

 private:
  // kCreated until start(); kClosing from close() until the owner thread has
  // ended; kClosed once it has and everything is released.
  enum class State : uint8_t { kCreated, kStarted, kClosing, kClosed };

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
  Napi::Value PostAll(const Napi::CallbackInfo& info);
  Napi::Value Cancel(const Napi::CallbackInfo& info);
  Napi::Value Estimate(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value Notify(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Hold(const Napi::CallbackInfo& info);
  Napi::Value Unhold(const Napi::CallbackInfo& info);
  Napi::Value Engine(const Napi::CallbackInfo& info);
  Napi::Value BusyPollStats(const Napi::CallbackInfo& info);

  bool open() const { return state_ == State::kCreated || state_ == State::kStarted; }
  void CheckOpen(Napi::Env env) const;
  PeerEntry* FindPeer(Napi::Env env, const Napi::Value& name);
  // Registers the pending operation and sends its command; -> the token.
  template <typename C>
  uint32_t Submit(C command, PendingOp pending = PendingOp());
  Napi::Value SubmitRegister(RegionEntry* entry, bool allocate, bool check_memory_type = false);
  uint32_t SubmitWithPlan(XferEntry* xfer, bool estimate);

  // TableEvents
  void DestroyPeer(Peer* peer) override;
  void ReleasePlan(std::unique_ptr<Plan> plan) override;
  void DropRemoteRegions(Peer* peer, std::vector<std::unique_ptr<RemoteRegion>> regions) override;

  void OpenLoopHandles(Napi::Env env);
  static void OnEnvTeardown(void* agent);
  static void OnWake(uv_async_t* handle);
  static void OnBeforePoll(uv_prepare_t* handle);
  void DrainEvents(Napi::Env env);
  void UpdateRef();
  void FinishClose();
  void Teardown();
  void ReleaseAll();

  std::shared_ptr<AgentLink> link_;
  std::string name_;
  std::string engine_name_;
  // Registered JS buffers' pages move into shared memory (shared_pages.h).
  bool share_pages_ = false;
  KvxferAddon* addon_ = nullptr;
  State state_ = State::kCreated;
  AgentTables tables_{this};
  std::unique_ptr<OwnerThread> owner_;

  // The owner thread wakes this thread through wake_. libuv runs its
  // callback at most once per event-loop turn however often it is
  // signalled, so a burst of completions (each reposting work) cannot starve
  // timers and I/O: one batch per turn, then the loop goes round. The
  // handles outlive the owner thread: every teardown path joins the thread
  // before closing them.
  std::shared_ptr<loop::EnvHold> env_hold_;
  loop::LoopHandle<uv_async_t> wake_;
  loop::LoopHandle<uv_prepare_t> before_poll_;
  loop::BusyPoll busy_poll_;
  uint32_t holds_ = 0;
  bool loop_ref_ = false;

  napi_env env_ = nullptr;
  Napi::FunctionReference on_events_;
  std::unique_ptr<Napi::AsyncContext> async_context_;
  std::vector<Event> events_scratch_;
  std::vector<Completion> completions_scratch_;
  std::vector<uint8_t> metadata_;  // the latest the owner thread reported
};

}  // namespace kvxfer
