#include "agent/deliver.h"

#include "agent/convert.h"

namespace kvxfer {

namespace {

Napi::Number Number(Napi::Env env, uint64_t value) { return Napi::Number::New(env, static_cast<double>(value)); }
Napi::Number Number(Napi::Env env, int64_t value) { return Napi::Number::New(env, static_cast<double>(value)); }

Napi::Number Kind(Napi::Env env, EventKind kind) { return Napi::Number::New(env, static_cast<int>(kind)); }

}  // namespace

Napi::Float64Array BatchTranslator::Completions(const std::vector<Completion>& completions) {
  Napi::Float64Array done = Napi::Float64Array::New(env_, completions.size() * 2);
  double* pairs = done.Data();
  // Every completion is reported; JS ignores a token it no longer waits for.
  for (const Completion& c : completions) {
    tables_->Settle(c.token);
    *pairs++ = c.token;
    *pairs++ = static_cast<double>(c.duration_ns);
  }
  return done;
}

Napi::Array BatchTranslator::Others(std::vector<Event>& events, bool* closed) {
  others_ = Napi::Array::New(env_);
  closed_ = false;
  for (Event& e : events) std::visit(*this, e);
  *closed = closed_;
  return others_;
}

Napi::Object BatchTranslator::OperationResult(uint32_t token, const Status& status) {
  Napi::Object o = Napi::Object::New(env_);
  o.Set("kind", Kind(env_, EventKind::kOperation));
  o.Set("token", Napi::Number::New(env_, token));
  if (!status.ok()) o.Set("error", MakeError(env_, status).Value());
  return o;
}

void BatchTranslator::operator()(ev::Started& e) {
  tables_->Settle(e.token);
  if (e.status.ok()) *metadata_ = std::move(e.metadata);
  Push(OperationResult(e.token, e.status));
}

void BatchTranslator::operator()(ev::Registered& e) {
  PendingOp op = tables_->Settle(e.token);
  Napi::Object o = OperationResult(e.token, e.status);
  if (auto* region = std::get_if<RegionEntry*>(&op)) {
    if (e.status.ok()) {
      *metadata_ = std::move(e.metadata);
      tables_->regions().MarkRegistered(*region);
      // Memory the engine allocated (heap memory where UCX has no shared
      // transport) is recorded too, before JS knows its address: a view of
      // it registered elsewhere must not move pages this engine holds.
      LocalRegion& r = (*region)->region;
      if (r.memory && !(*region)->host) (*region)->host = HostRegistration::Add(r.address, r.length, false);
      o.Set("value", Napi::BigInt::New(env_, static_cast<uint64_t>((*region)->region.address)));
    } else {
      tables_->regions().Erase(*region);
    }
  }
  Push(o);
  if (e.status.ok()) PushMetadataChanged();
}

void BatchTranslator::PushMetadataChanged() {
  Napi::Object o = Napi::Object::New(env_);
  o.Set("kind", Kind(env_, EventKind::kMetadataChanged));
  Push(o);
}

void BatchTranslator::operator()(ev::Deregistered& e) {
  PendingOp op = tables_->Settle(e.token);
  *metadata_ = std::move(e.metadata);
  if (auto* region = std::get_if<RegionEntry*>(&op)) tables_->regions().Erase(*region);
  Push(OperationResult(e.token, Status::Ok()));
  PushMetadataChanged();
}

void BatchTranslator::operator()(ev::PeerLoaded& e) {
  tables_->Settle(e.token);
  Napi::Object o = OperationResult(e.token, e.status);
  if (e.status.ok()) {
    AgentTables::PeerChange change;
    const std::string& name = tables_->AdoptPeer(std::move(e.peer), &change)->name();
    o.Set("value", name);
    Napi::Object changed = Napi::Object::New(env_);
    changed.Set("kind", Kind(env_, EventKind::kPeerChanged));
    changed.Set("peer", name);
    changed.Set("change", change == AgentTables::PeerChange::kLoaded    ? "loaded"
                          : change == AgentTables::PeerChange::kUpdated ? "updated"
                                                                        : "replaced");
    Push(changed);
  }
  Push(o);
}

void BatchTranslator::operator()(ev::PeerUpdated& e) {
  const bool changed = !e.update.added.empty() || !e.update.removed.empty();
  const std::string name = e.peer->name;  // the peer object lives until its PeerDestroyed
  PeerEntry* entry = tables_->MergeUpdate(e.peer, std::move(e.update));
  if (changed && entry != nullptr && tables_->IsCurrent(entry)) {
    Napi::Object o = Napi::Object::New(env_);
    o.Set("kind", Kind(env_, EventKind::kPeerChanged));
    o.Set("peer", name);
    o.Set("change", "updated");
    Push(o);
  }
  if (e.token == 0) return;
  tables_->Settle(e.token);
  Napi::Object o = OperationResult(e.token, Status::Ok());
  o.Set("value", name);
  Push(o);
}

void BatchTranslator::operator()(ev::PeerDestroyed& e) { tables_->PeerDestroyed(e.peer); }

void BatchTranslator::operator()(ev::OperationDone& e) {
  tables_->Settle(e.token);
  Napi::Object o = OperationResult(e.token, e.status);
  o.Set("value", Number(env_, e.duration_ns));
  if (e.has_telemetry) {
    Napi::Object t = Napi::Object::New(env_);
    t.Set("postUs", Number(env_, e.telemetry.post_us));
    t.Set("transferUs", Number(env_, e.telemetry.transfer_us));
    t.Set("bytes", Number(env_, e.telemetry.bytes));
    t.Set("descriptors", Number(env_, e.telemetry.descriptors));
    o.Set("telemetry", t);
  }
  Push(o);
}

void BatchTranslator::operator()(ev::Estimated& e) {
  tables_->Settle(e.token);
  Napi::Object o = OperationResult(e.token, e.status);
  if (e.status.ok()) {
    Napi::Object v = Napi::Object::New(env_);
    v.Set("durationUs", Number(env_, e.estimate.duration_us));
    v.Set("errorMarginUs", Number(env_, e.estimate.error_margin_us));
    v.Set("method", Napi::String::New(env_, e.estimate.method == 0 ? "analytical" : "unknown"));
    o.Set("value", v);
  }
  Push(o);
}

void BatchTranslator::operator()(ev::NotificationReceived& e) {
  Napi::Object o = Napi::Object::New(env_);
  // From another incarnation than the live peer loaded under that name: a
  // second agent with the name. Reported, not merged with the loaded one's.
  PeerEntry* loaded = nullptr;
  const bool conflict = e.incarnation != 0 && tables_->FindPeer(e.peer, &loaded).ok() &&
                        loaded->state == PeerEntry::State::kLive && loaded->peer->identity_known &&
                        loaded->peer->identity.incarnation != e.incarnation;
  o.Set("kind", Kind(env_, conflict ? EventKind::kNameConflict : EventKind::kNotification));
  o.Set("peer", e.peer);
  o.Set("data", Napi::Buffer<uint8_t>::Copy(env_, e.message.data(), e.message.size()));
  Push(o);
}

void BatchTranslator::operator()(ev::RegionsRevoked& e) { tables_->RevokeRegions(e.peer, e.incarnation, e.regions); }

void BatchTranslator::operator()(ev::PeerFailed& e) {
  PeerEntry* entry = tables_->PeerFailed(e.peer, e.status);
  // An older object of the name (held by prepared transfers) failing says
  // nothing of the peer JS knows by that name now.
  if (entry == nullptr || !tables_->IsCurrent(entry)) return;
  Napi::Object o = Napi::Object::New(env_);
  o.Set("kind", Kind(env_, EventKind::kPeerFailed));
  o.Set("peer", entry->name());
  o.Set("error", MakeError(env_, e.status).Value());
  Push(o);
}

void BatchTranslator::operator()(ev::Closed& e) {
  tables_->Settle(e.token);
  closed_ = true;
  Push(OperationResult(e.token, Status::Ok()));
}

}  // namespace kvxfer
