// JS event delivery: one batch from the owner thread becomes what the
// agent's JS callback takes, (done, others) (lib/native.ts):
//  - done: successful completions as [token, durationNs] pairs in one
//    Float64Array, so a burst of completions costs no object per transfer;
//  - others: everything else as objects { kind, token?, error?, value?,
//    telemetry?, peer?, data? }, in the order they happened.
// Translating an event also applies it to the tables (a region registered,
// a peer loaded or failed, a transfer finished). JS thread only.
#pragma once

#include <napi.h>

#include <cstdint>
#include <vector>

#include "agent/tables.h"
#include "commands.h"

namespace kvxfer {

class BatchTranslator {
 public:
  // `metadata` is the agent's latest metadata, replaced by the events that
  // carry a new one.
  BatchTranslator(Napi::Env env, AgentTables* tables, std::vector<uint8_t>* metadata)
      : env_(env), tables_(tables), metadata_(metadata) {}

  Napi::Float64Array Completions(const std::vector<Completion>& completions);
  // Whether the batch holds ev::Closed: the owner thread has ended.
  Napi::Array Others(std::vector<Event>& events, bool* closed);

  void operator()(ev::Started& e);
  void operator()(ev::Registered& e);
  void operator()(ev::Deregistered& e);
  void operator()(ev::PeerLoaded& e);
  void operator()(ev::PeerUpdated& e);
  void operator()(ev::PeerDestroyed& e);
  void operator()(ev::OperationDone& e);
  void operator()(ev::Estimated& e);
  void operator()(ev::NotificationReceived& e);
  void operator()(ev::RegionsRevoked& e);
  void operator()(ev::PeerFailed& e);
  void operator()(ev::Closed& e);

 private:
  Napi::Object OperationResult(uint32_t token, const Status& status);
  void Push(Napi::Object object) { others_.Set(others_.Length(), object); }
  // The local metadata changed (a region came or went): peers may want it.
  void PushMetadataChanged();

  Napi::Env env_;
  AgentTables* const tables_;
  std::vector<uint8_t>* const metadata_;
  Napi::Array others_;
  bool closed_ = false;
};

}  // namespace kvxfer
