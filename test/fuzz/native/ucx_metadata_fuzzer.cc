// libFuzzer target: ParseUcxMetadata, the UCX engine's metadata blob from
// peers (native/ucx/ucx_metadata.h), built with its CRC check off so that
// mutations reach the parser. A blob it accepts must be internally sound
// (bounded name, worker address and keys inside the input, regions that do
// not wrap) and survive a round trip: packed again from what was parsed, it
// parses to the same fields.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "ucx/ucx_metadata.h"

namespace {

bool Inside(const uint8_t* p, size_t n, const uint8_t* data, size_t size) {
  return p >= data && n <= size && p - data <= static_cast<ptrdiff_t>(size - n);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvxfer::UcxMetadata md;
  if (!kvxfer::ParseUcxMetadata(data, size, &md).ok()) return 0;
  if (md.name.empty() || md.name.size() > kvxfer::limits::kMaxAgentNameBytes) std::abort();
  if (!Inside(md.worker_address, md.worker_address_length, data, size)) std::abort();
  std::vector<std::unique_ptr<kvxfer::LocalRegion>> regions;
  std::vector<const kvxfer::LocalRegion*> views;
  for (const kvxfer::UcxMetadataRegion& r : md.regions) {
    if (r.length == 0 || r.length - 1 > UINT64_MAX - r.address) std::abort();
    if (!Inside(r.key, r.key_length, data, size)) std::abort();
    auto region = std::make_unique<kvxfer::LocalRegion>();
    region->address = r.address;
    region->length = r.length;
    region->kind = r.kind;
    region->device = r.device;
    region->remote_key.assign(r.key, r.key + r.key_length);
    views.push_back(region.get());
    regions.push_back(std::move(region));
  }
  const std::vector<uint8_t> worker(md.worker_address, md.worker_address + md.worker_address_length);
  const std::vector<uint8_t> again = kvxfer::PackUcxMetadata(md.name, md.identity, worker, views);
  kvxfer::UcxMetadata md2;
  if (!kvxfer::ParseUcxMetadata(again.data(), again.size(), &md2).ok()) std::abort();
  const kvxfer::ProcessIdentity &a = md.identity, &b = md2.identity;
  if (md2.name != md.name || a.incarnation != b.incarnation || a.boot_id != b.boot_id || a.pid != b.pid ||
      a.start_time != b.start_time || a.pid_namespace != b.pid_namespace || md2.worker_address_length != md.worker_address_length ||
      std::memcmp(md2.worker_address, md.worker_address, md.worker_address_length) != 0 ||
      md2.regions.size() != md.regions.size()) {
    std::abort();
  }
  for (size_t i = 0; i < md.regions.size(); ++i) {
    const kvxfer::UcxMetadataRegion &x = md.regions[i], &y = md2.regions[i];
    if (x.address != y.address || x.length != y.length || x.kind != y.kind || x.device != y.device ||
        x.key_length != y.key_length || std::memcmp(x.key, y.key, x.key_length) != 0) {
      std::abort();
    }
  }
  return 0;
}
