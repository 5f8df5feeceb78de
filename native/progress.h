// The owner thread: the only thread that calls into the engine. The JS thread
// submits commands and returns at once; the owner thread runs them, drives
// progress (spinning while transfers are in flight, sleeping on the engine's
// event fd when idle) and queues events that the JS thread drains in batches.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "commands.h"
#include "engine.h"
#include "liveness.h"
#include "spsc_queue.h"

namespace kvxfer {

class OwnerThread : private EngineEvents {
 public:
  // `wake_js` is called from the owner thread when the event queues go from
  // empty to non-empty; the JS thread then drains them with TakeEvents.
  OwnerThread(std::string agent_name, EngineOptions options, std::function<void()> wake_js);
  ~OwnerThread();

  OwnerThread(const OwnerThread&) = delete;
  OwnerThread& operator=(const OwnerThread&) = delete;

  void Submit(Command command);  // JS thread
  // JS thread: commands the owner thread sees all at once (one publishing
  // store, at most one wake-up), in order.
  void SubmitAll(std::vector<Command>* commands);
  // JS thread. Completions are reported apart from (and before) the other
  // events of the same batch.
  void TakeEvents(std::vector<Event>* events, std::vector<Completion>* completions);
  // JS thread: has anything been published since the last TakeEvents?
  bool HasEvents() const { return !events_taken_.load(std::memory_order_acquire); }
  // Waits for the thread to end; it ends after a kClose command.
  void Join();

 private:
  // Where the engine is: kIdle until kStart succeeds (before that only
  // cmd::Start and cmd::Close can arrive: JS sends nothing else until it has
  // seen ev::Started succeed), kStopped after cmd::Close.
  enum class EngineState : uint8_t { kIdle, kRunning, kStopped };

  void Run();
  void WakeIfSleeping();
  bool DrainCommands();
  void Execute(Command& command);
  void Execute(cmd::Start& c);
  void Execute(cmd::Register& c);
  void Execute(cmd::Allocate& c);
  void Execute(cmd::Deregister& c);
  void Execute(cmd::LoadPeer& c);
  void Execute(cmd::DropRemoteRegions& c);
  // Merges `blob` into the loaded peer it is newer metadata of (same name,
  // same incarnation) and pushes ev::PeerUpdated (or the failure). `sender`:
  // who pushed it, when it was pushed rather than loaded.
  enum class Update : uint8_t { kDone, kLoadAsNew, kIgnored };
  Update UpdateInPlace(uint32_t token, const std::vector<uint8_t>& blob, const std::string* sender,
                       uint64_t sender_incarnation);
  // Connects to `blob` as a peer object of its own: ev::PeerLoaded.
  void LoadAsNew(uint32_t token, const std::vector<uint8_t>& blob);
  void Execute(cmd::ForgetName& c);
  void Execute(cmd::DestroyPeer& c);
  void Execute(cmd::Post& c);
  void Execute(cmd::Cancel& c);
  void Execute(cmd::Estimate& c);
  void Execute(cmd::ReleasePlan& c);
  void Execute(cmd::Notify& c);
  void Execute(cmd::Close& c);
  void Push(Event event);
  void PublishCompletions();
  void Publish(Event* event);  // ready_, then the event if any
  void SleepUntilWork(int timeout_ms);
  // Fails the peers whose process has ended (liveness.h).
  void CheckLiveness();
  void FailExited(Peer* peer);
  // Fails the peers whose work stopped moving (StallWatch); looks at most
  // every kStallCheckNs.
  void CheckStalls();
  Status ReplaceIncarnation(const std::vector<uint8_t>& blob);
  bool running() const { return state_ == EngineState::kRunning; }

  // EngineEvents
  void OperationDone(uint32_t token, Status status, uint64_t duration_ns,
                     const Telemetry* telemetry) override;
  void NotificationReceived(std::string peer, uint64_t incarnation, std::vector<uint8_t> message) override;
  void RegionsRevoked(std::string peer, uint64_t incarnation, std::vector<wire::RegionFields> regions) override;
  void MetadataPushed(std::string peer, uint64_t incarnation, std::vector<uint8_t> blob) override;
  void PeerFailed(Peer* peer, Status status) override;
  void PeerDestroyed(Peer* peer) override;
  bool ConfirmPeerFailure(Peer* peer) override;
  bool WatchesPeer(Peer* peer) override { return liveness_.Watching(peer); }

  const std::string agent_name_;
  const EngineOptions options_;
  const std::function<void()> wake_js_;
  std::unique_ptr<Engine> engine_;
  Status engine_error_;  // why engine_ could not be created
  EngineState state_ = EngineState::kIdle;

  SpscQueue<Command> commands_;  // JS thread -> owner thread
  // Read by the JS thread on every post: kept off the lines the event queues
  // below dirty on every batch.
  alignas(64) std::atomic<bool> sleeping_{false};
  int wake_fd_ = -1;  // eventfd the JS thread writes to wake a sleeping owner

  alignas(64) std::mutex events_mutex_;
  // True while the JS thread has taken everything published: it may be
  // idle, waiting, so completions go out mid-pass (DrainCommands); otherwise
  // they join the batch published at the end of the pass.
  std::atomic<bool> events_taken_{true};
  std::vector<Event> events_;
  std::vector<Completion> completions_;

  // Owner thread only.
  // Completions not yet published: one lock and at most one wake-up per
  // batch rather than per transfer.
  std::vector<Completion> ready_;
  uint32_t in_flight_ = 0;
  Liveness liveness_;
  StallWatch stalls_{options_.peer_timeout_ms * 1000000};
  uint64_t stalls_checked_ns_ = 0;
  // Every Peer object of each name not destroyed yet, newest last; the
  // newest is the agent the name stands for, unless it was forgotten.
  struct NamedPeers {
    std::vector<Peer*> objects;
    bool forgotten = false;
    Peer* current() const { return forgotten || objects.empty() ? nullptr : objects.back(); }
  };
  std::unordered_map<std::string, NamedPeers> names_;
  struct PushedMetadata {
    std::string peer;
    uint64_t incarnation;
    std::vector<uint8_t> blob;
  };
  std::vector<PushedMetadata> pushed_;
  bool ApplyPushedMetadata();
  std::vector<Peer*> dead_scratch_;
  std::vector<pollfd> poll_scratch_;

  std::thread thread_;
};

}  // namespace kvxfer
