// Writes the control_frame target's seed corpus with the engine's own
// packers: a notification, a revocation of one and of three regions, and
// pushed metadata (a real UCX metadata blob from the ucx_metadata corpus),
// each after its u64 tag. Run by test/fuzz/seeds.mjs (make -C
// test/fuzz/native seeds).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "ucx/ucx_control.h"

namespace {

bool Write(const std::string& dir, const char* name, kvxfer::ControlKind kind, const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> out(sizeof(uint64_t));
  const uint64_t tag = kvxfer::ControlTagOf(kind);
  std::memcpy(out.data(), &tag, sizeof tag);
  const std::vector<uint8_t> header = kvxfer::PackControlHeader(0x1d2c3b4a59687766ull, "prefill-0");
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), payload.begin(), payload.end());
  std::ofstream file(dir + "/" + name, std::ios::binary);
  file.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
  return file.good();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: control_frame_seeds <corpus dir> <ucx metadata blob>\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream blob_file(argv[2], std::ios::binary);
  const std::vector<uint8_t> metadata((std::istreambuf_iterator<char>(blob_file)), std::istreambuf_iterator<char>());
  if (metadata.empty()) {
    std::fprintf(stderr, "control_frame_seeds: cannot read %s\n", argv[2]);
    return 2;
  }
  const std::string text = "kv ready: request 42, 32 layers";
  const kvxfer::wire::RegionFields one{0x7f0000001000, 1 << 20, 0, 0};
  const kvxfer::wire::RegionFields vram{0x7e0000000000, 64 << 20, 1, 3};
  const kvxfer::wire::RegionFields small{0x7f0000200000, 4096, 0, 0};
  const bool ok = Write(dir, "notification", kvxfer::ControlKind::kNotification, {text.begin(), text.end()}) &&
                  Write(dir, "empty-notification", kvxfer::ControlKind::kNotification, {}) &&
                  Write(dir, "revocation-one", kvxfer::ControlKind::kRevocation,
                        kvxfer::wire::PackRevocation(0x1d2c3b4a59687766ull, {one})) &&
                  Write(dir, "revocation-three", kvxfer::ControlKind::kRevocation,
                        kvxfer::wire::PackRevocation(0x1d2c3b4a59687766ull, {one, vram, small})) &&
                  Write(dir, "metadata", kvxfer::ControlKind::kMetadata, metadata);
  if (!ok) std::fprintf(stderr, "control_frame_seeds: cannot write under %s\n", dir.c_str());
  return ok ? 0 : 1;
}
