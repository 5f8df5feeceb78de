#include "agent/plan_builder.h"

#include <cstdio>
#include <string>

#include "descs.h"

namespace kvxfer {

namespace {

std::string Hex(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string DescText(const char* side, uint32_t i, const Desc& d) {
  return std::string(side) + " descriptor " + std::to_string(i) + " (" + Hex(d.address) + ", " +
         std::to_string(d.length) + " bytes)";
}

Status LocalMiss(uint32_t i, const Desc& d, bool partial) {
  return partial ? Status::Error(Code::kOutOfRange, DescText("local", i, d) + " runs past the end of its region")
                 : Status::Error(Code::kNotRegistered, DescText("local", i, d) + " is not in a registered region");
}

Status RemoteMiss(const PeerEntry& peer, uint32_t i, const Desc& d, bool partial) {
  const std::string where = " of peer '" + peer.name() + "'";
  return partial ? Status::Error(Code::kOutOfRange, DescText("remote", i, d) + " runs past the end of a region" + where)
                 : Status::Error(Code::kNotRegistered, DescText("remote", i, d) + " is in no registered region" + where);
}

}  // namespace

Status BuildPlan(const PlanRequest& request, RegionTable& regions, PeerEntry& peer, XferEntry* out) {
  if (request.notify.size() > limits::kMaxNotificationBytes) {
    return Status::Error(Code::kInvalidArg, "a notification holds at most 16 KiB");
  }
  DescListView local, remote;
  Status s = DescListView::Parse(request.local, request.local_length, &local);
  if (!s.ok()) return Status::Error(Code::kInvalidArg, "local list: " + s.message);
  s = DescListView::Parse(request.remote, request.remote_length, &remote);
  if (!s.ok()) return Status::Error(Code::kInvalidArg, "remote list: " + s.message);
  if (local.count() != remote.count()) {
    return Status::Error(Code::kInvalidArg, "the local list has " + std::to_string(local.count()) +
                                                " descriptors and the remote list " + std::to_string(remote.count()));
  }
  if (local.count() == 0) return Status::Error(Code::kInvalidArg, "a transfer needs at least one descriptor");

  Plan& plan = *out->plan;
  plan.op = request.op;
  plan.peer = peer.peer.get();
  plan.notify = request.notify;
  plan.segments.clear();
  plan.segments.reserve(local.count());
  out->regions.clear();
  out->remote_regions.clear();
  out->peer = &peer;
  out->revocations_checked = peer.peer->revocations;
  const RemoteRegionList::Items& remote_regions = peer.peer->regions.items();
  const bool check_remote = peer.peer->regions_known;
  const uint64_t mark = regions.NewPlanMark();
  auto get = [](const std::unique_ptr<RemoteRegion>& x) -> const RemoteRegion& { return *x; };
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < local.count(); ++i) {
    const Desc l = local.at(i);
    const Desc r = remote.at(i);
    if (l.length != r.length) {
      return Status::Error(Code::kInvalidArg, "descriptor " + std::to_string(i) + ": local length " +
                                                  std::to_string(l.length) + " differs from remote length " +
                                                  std::to_string(r.length));
    }
    bool partial = false;
    auto* lr = const_cast<RegionEntry*>(regions.Containing(l, &partial));
    if (lr == nullptr) return LocalMiss(i, l, partial);
    RemoteRegion* rr = nullptr;
    if (check_remote) {
      // A region registered again where a revoked one was is the one meant.
      const auto* hit = FindContainingIf(
          remote_regions, r, get, [](const RemoteRegion& x) { return x.revoked; }, &partial);
      if (hit == nullptr) {
        bool revoked_partial = false;
        if (FindContaining(remote_regions, r, get, &revoked_partial) != nullptr) {
          return RevokedRegion(peer.name(), r.address);
        }
        return RemoteMiss(peer, i, r, partial);
      }
      rr = hit->get();
      if (rr->plan_mark != mark) {
        rr->plan_mark = mark;
        out->remote_regions.push_back(rr);
      }
    }
    if (lr->plan_mark != mark) {
      lr->plan_mark = mark;
      out->regions.push_back(lr);
    }
    if (l.length > UINT64_MAX - bytes) {
      return Status::Error(Code::kInvalidArg, "the transfer would move more than 2^64 bytes");
    }
    plan.segments.push_back(Segment{l.address, r.address, l.length, r.device, &lr->region, rr});
    bytes += l.length;
  }
  plan.bytes = bytes;
  plan.remote_kind = request.remote_kind.value_or(plan.segments.front().local_region->kind);
  return Status::Ok();
}

}  // namespace kvxfer
