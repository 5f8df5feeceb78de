// What the JS thread and an agent's owner thread say to each other: commands
// go to the owner thread (one payload type each), events come back. No V8
// types: both sides are plain C++.
//
// Ownership: objects named by pointer belong to the JS side's tables
// (native/agent/tables.h) and stay alive until the event that answers the
// command has been handled; a command or event that holds something by value
// or unique_ptr owns it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "engine.h"
#include "status.h"

namespace kvxfer {

namespace cmd {

// Starts the engine; answered by ev::Started.
struct Start {
  uint32_t token;
};
// Registers memory the region describes; answered by ev::Registered.
struct Register {
  uint32_t token;
  LocalRegion* region;
  // Memory the caller vouches for (registerAddress): its CUDA memory type is
  // checked against region->kind first (cuda/memory_check.h).
  bool check_memory_type = false;
};
// Allocates and registers `region->length` bytes; answered by ev::Registered.
struct Allocate {
  uint32_t token;
  LocalRegion* region;
};
// Answered by ev::Deregistered.
struct Deregister {
  uint32_t token;
  LocalRegion* region;
};
// Parses and connects to an untrusted blob; answered by ev::PeerLoaded, or
// by ev::PeerUpdated when it is newer metadata of a loaded peer.
struct LoadPeer {
  uint32_t token;
  std::vector<uint8_t> blob;
};
// The application forgot the peer: its name is free for another agent.
// With a failure (the peer left, say discovery), its work in flight fails
// with it. Not answered.
struct ForgetName {
  Peer* peer;
  Status failure;  // ok: nothing fails
};
// No plan or notification uses the peer any more; answered by
// ev::PeerDestroyed once the connection is down.
struct DestroyPeer {
  Peer* peer;
};
// Posts a prepared plan, immutable until its ev::OperationDone (or
// Completion).
struct Post {
  uint32_t token;
  Plan* plan;
};
// The caller stopped waiting for `target`: abort it where the engine can.
// Its completion still follows.
struct Cancel {
  uint32_t target;
};
// Answered by ev::Estimated.
struct Estimate {
  uint32_t token;
  Plan* plan;
};
// The plan holds engine state, which is freed on the thread that made it.
struct ReleasePlan {
  std::unique_ptr<Plan> plan;
};
// Revoked regions no transfer uses; not answered.
struct DropRemoteRegions {
  Peer* peer;
  std::vector<std::unique_ptr<RemoteRegion>> regions;
};
// `message` stays valid until the notification's completion.
struct Notify {
  uint32_t token;
  Peer* peer;
  const std::vector<uint8_t>* message;
};
// Fails what is in flight, shuts the engine down and ends the thread;
// answered by ev::Closed. Nothing follows it.
struct Close {
  uint32_t token;
};

}  // namespace cmd

// std::monostate is an empty queue slot; it is never sent.
using Command = std::variant<std::monostate, cmd::Start, cmd::Register, cmd::Allocate, cmd::Deregister,
                             cmd::LoadPeer, cmd::ForgetName, cmd::DestroyPeer, cmd::Post, cmd::Cancel, cmd::Estimate,
                             cmd::ReleasePlan, cmd::DropRemoteRegions, cmd::Notify, cmd::Close>;

namespace ev {

// `metadata` is this agent's, as it stands once the engine has started.
struct Started {
  uint32_t token;
  Status status;
  std::vector<uint8_t> metadata;
};
struct Registered {
  uint32_t token;
  Status status;
  LocalRegion* region;
  std::vector<uint8_t> metadata;  // with the region, when it succeeded
};
struct Deregistered {
  uint32_t token;
  LocalRegion* region;
  std::vector<uint8_t> metadata;  // without the region
};
struct PeerLoaded {
  uint32_t token;
  Status status;
  std::unique_ptr<Peer> peer;  // when it succeeded
};
// Newer metadata merged into a loaded peer; token 0 when the peer pushed it
// (no loadPeer waits for it).
struct PeerUpdated {
  uint32_t token;
  Peer* peer;
  PeerUpdate update;
};
struct PeerDestroyed {
  Peer* peer;
};
// A transfer or standalone notification that failed, or carries what the
// engine measured; plain successes travel as Completion.
struct OperationDone {
  uint32_t token;
  Status status;
  uint64_t duration_ns;
  bool has_telemetry;
  Telemetry telemetry;
};
struct Estimated {
  uint32_t token;
  Status status;
  CostEstimate estimate;
};
struct NotificationReceived {
  std::string peer;
  uint64_t incarnation;  // the sender's; 0: the engine does not carry it
  std::vector<uint8_t> message;
};
// A peer deregistered regions (wire.h): refuse descriptors into them.
struct RegionsRevoked {
  std::string peer;
  uint64_t incarnation;
  std::vector<wire::RegionFields> regions;
};
// The peer is gone: its in-flight work fails, new work is refused.
struct PeerFailed {
  Peer* peer;
  Status status;
};
struct Closed {
  uint32_t token;
};

}  // namespace ev

using Event = std::variant<ev::Started, ev::Registered, ev::Deregistered, ev::PeerLoaded, ev::PeerUpdated,
                           ev::PeerDestroyed,
                           ev::OperationDone, ev::Estimated, ev::NotificationReceived, ev::RegionsRevoked,
                           ev::PeerFailed, ev::Closed>;

// A transfer or notification that succeeded without telemetry: the common
// case, kept out of Event so the hot path moves 16 bytes, not a Status.
struct Completion {
  uint32_t token;
  uint64_t duration_ns;
};

// std::visit over an overload set of lambdas.
template <typename... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <typename... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

}  // namespace kvxfer
