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
#include <vector>

#include "engine.h"
#include "spsc_queue.h"

namespace kvxfer {

struct Command {
  enum Type : uint8_t {
    kStart,
    kRegister,
    kAllocate,
    kDeregister,
    kLoadPeer,
    kDestroyPeer,
    kPost,
    kCancel,
    kEstimate,
    kReleasePlan,
    kNotify,
    kClose,
  };
  Command() = default;
  explicit Command(Type t) : type(t) {}
  Type type = kClose;
  uint32_t token = 0;
  LocalRegion* region = nullptr;
  Peer* peer = nullptr;
  Plan* plan = nullptr;  // kPost, kEstimate: owned by the agent; kReleasePlan: owned by the command
  uint32_t target = 0;   // kCancel: the token to abort
  const std::vector<uint8_t>* message = nullptr;  // kNotify: owned by the agent
  std::vector<uint8_t> bytes;                     // kLoadPeer: the blob
};

struct Event {
  enum Type : uint8_t {
    kStarted,         // token, data (metadata)
    kRegistered,      // token, region, data (metadata)
    kDeregistered,    // token, region, data (metadata)
    kPeerLoaded,      // token, peer (owned by the event until adopted)
    kPeerDestroyed,   // peer
    kOperationDone,   // token, duration_ns, telemetry when the engine measured it
    kEstimated,       // token, estimate
    kNotification,    // peer_name, data
    kPeerFailed,      // peer
    kClosed,          // token
  };
  explicit Event(Type t, uint32_t tok = 0, Status s = Status()) : type(t), token(tok), status(std::move(s)) {}
  Type type;
  uint32_t token = 0;
  Status status;
  uint64_t duration_ns = 0;
  bool has_telemetry = false;
  Telemetry telemetry;
  CostEstimate estimate;
  LocalRegion* region = nullptr;
  Peer* peer = nullptr;
  std::string peer_name;
  std::vector<uint8_t> data;
};

// A transfer or notification that succeeded without telemetry: the common
// case, kept out of Event so the hot path moves 16 bytes, not a Status.
struct Completion {
  uint32_t token;
  uint64_t duration_ns;
};

class OwnerThread : private EngineEvents {
 public:
  // `wake_js` is called from the owner thread when the event queues go from
  // empty to non-empty; the JS thread then drains them with TakeEvents.
  OwnerThread(std::string agent_name, EngineOptions options, std::function<void()> wake_js);
  ~OwnerThread();

  OwnerThread(const OwnerThread&) = delete;
  OwnerThread& operator=(const OwnerThread&) = delete;

  void Submit(Command command);  // JS thread
  // JS thread. Completions are reported apart from (and before) the other
  // events of the same batch.
  void TakeEvents(std::vector<Event>* events, std::vector<Completion>* completions);
  // JS thread: has anything been published since the last TakeEvents?
  bool HasEvents() const { return !events_taken_.load(std::memory_order_acquire); }
  // Waits for the thread to end; it ends after a kClose command.
  void Join();

 private:
  void Run();
  void Execute(Command& command);
  bool DrainCommands();
  void Push(Event event);
  void PublishCompletions();
  void Publish(Event* event);  // ready_, then the event if any
  void SleepUntilWork(int timeout_ms);

  // EngineEvents
  void OperationDone(uint32_t token, Status status, uint64_t duration_ns,
                     const Telemetry* telemetry) override;
  void NotificationReceived(std::string peer, std::vector<uint8_t> message) override;
  void PeerFailed(Peer* peer, Status status) override;
  void PeerDestroyed(Peer* peer) override;

  const std::string agent_name_;
  const EngineOptions options_;
  const std::function<void()> wake_js_;
  std::unique_ptr<Engine> engine_;
  Status engine_error_;  // why engine_ could not be created
  bool engine_started_ = false;

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
  bool stopping_ = false;

  std::thread thread_;
};

}  // namespace kvxfer
