// libFuzzer target: UnwrapNixlMetadata, kvxfer's envelope around a NIXL
// peer's blob (native/nixl/nixl_envelope.h), built with its CRC check off.
// An envelope it accepts must hold its NIXL blob inside the input, regions
// that do not wrap, sorted by address, and survive a round trip: enveloped
// again from what was read, it reads back to the same fields.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "nixl/nixl_envelope.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvxfer::NixlUnwrapped unwrapped;
  if (!kvxfer::UnwrapNixlMetadata(data, size, &unwrapped).ok()) return 0;
  if (unwrapped.raw_length > size || (size > 0 && unwrapped.raw == nullptr) ||
      (unwrapped.raw != nullptr &&
       (unwrapped.raw < data || static_cast<size_t>(unwrapped.raw - data) > size - unwrapped.raw_length))) {
    std::abort();
  }
  if (!unwrapped.enveloped) {
    if (unwrapped.raw != data || unwrapped.raw_length != size) std::abort();
    return 0;
  }
  std::vector<std::unique_ptr<kvxfer::LocalRegion>> regions;
  std::vector<const kvxfer::LocalRegion*> views;
  for (size_t i = 0; i < unwrapped.regions.size(); ++i) {
    const kvxfer::RemoteRegion& r = unwrapped.regions[i];
    if (r.length == 0 || r.length - 1 > UINT64_MAX - r.address) std::abort();
    if (i > 0 && unwrapped.regions[i - 1].address > r.address) std::abort();
    auto region = std::make_unique<kvxfer::LocalRegion>();
    region->address = r.address;
    region->length = r.length;
    region->kind = r.kind;
    region->device = r.device;
    views.push_back(region.get());
    regions.push_back(std::move(region));
  }
  const std::vector<uint8_t> raw(unwrapped.raw, unwrapped.raw + unwrapped.raw_length);
  const std::vector<uint8_t> again = kvxfer::NixlEnvelope(raw, unwrapped.identity, views);
  kvxfer::NixlUnwrapped back;
  if (!kvxfer::UnwrapNixlMetadata(again.data(), again.size(), &back).ok() || !back.enveloped) std::abort();
  const kvxfer::ProcessIdentity &a = unwrapped.identity, &b = back.identity;
  if (back.raw_length != unwrapped.raw_length || std::memcmp(back.raw, unwrapped.raw, unwrapped.raw_length) != 0 ||
      a.incarnation != b.incarnation || a.boot_id != b.boot_id || a.pid != b.pid || a.start_time != b.start_time ||
      a.pid_namespace != b.pid_namespace || back.regions.size() != unwrapped.regions.size()) {
    std::abort();
  }
  for (size_t i = 0; i < back.regions.size(); ++i) {
    const kvxfer::RemoteRegion &x = unwrapped.regions[i], &y = back.regions[i];
    if (x.address != y.address || x.length != y.length || x.kind != y.kind || x.device != y.device) std::abort();
  }
  return 0;
}
