#include "host_memory.h"

#include <cstdio>
#include <cstring>
#include <string>

namespace kvxfer {

bool ForEachMapping(const std::function<bool(const MappedRange&)>& visit) {
  FILE* maps = std::fopen("/proc/self/maps", "r");
  if (maps == nullptr) return false;
  char line[512];
  while (std::fgets(line, sizeof line, maps) != nullptr) {
    MappedRange m;
    unsigned long from = 0, to = 0;
    const bool parsed = std::sscanf(line, "%lx-%lx %4s", &from, &to, m.perms) == 3;
    // Lines that do not end in a newline were longer than `line`: skip their rest.
    while (std::strchr(line, '\n') == nullptr && std::fgets(line, sizeof line, maps) != nullptr) {
    }
    if (!parsed) continue;
    m.from = from;
    m.to = to;
    if (!visit(m)) break;
  }
  std::fclose(maps);
  return true;
}

Status CheckHostMemory(uint64_t address, uint64_t length) {
  // [address, reached) is mapped read-write. Measured as reached - address:
  // a range that ends at 2^64 has an end that does not fit.
  uint64_t reached = address;
  auto done = [&] { return reached - address >= length; };
  std::string problem;
  const bool read = ForEachMapping([&](const MappedRange& m) {
    if (m.to <= reached) return true;
    if (m.from > reached) return false;  // a hole at `reached`
    if (m.perms[0] != 'r' || m.perms[1] != 'w') {
      problem = std::string("is mapped ") + m.perms;
      return false;
    }
    reached = m.to;
    return !done();
  });
  if (!read || done()) return Status::Ok();
  char where[96];
  std::snprintf(where, sizeof where, "0x%llx (%llu bytes from 0x%llx)", static_cast<unsigned long long>(reached),
                static_cast<unsigned long long>(reached - address), static_cast<unsigned long long>(address));
  return Status::Error(Code::kInvalidArg, std::string("cannot register host memory: ") + where + " " +
                                              (problem.empty() ? "is not mapped in this process" : problem) +
                                              "; a dram region must be read-write memory of this process");
}

}  // namespace kvxfer
