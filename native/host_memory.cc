#include "host_memory.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

namespace kvxfer {

bool ForEachMapping(const char* maps_path, const std::function<bool(const MappedRange&)>& visit) {
  FILE* maps = std::fopen(maps_path, "r");
  if (maps == nullptr) return false;
  char line[512];
  while (std::fgets(line, sizeof line, maps) != nullptr) {
    MappedRange m;
    unsigned long from = 0, to = 0;
    unsigned long long offset = 0, inode = 0;
    int name_at = 0;
    const bool parsed = std::sscanf(line, "%lx-%lx %4s %llx %x:%x %llu %n", &from, &to, m.perms, &offset,
                                    &m.dev_major, &m.dev_minor, &inode, &name_at) == 7;
    if (parsed && name_at > 0) {
      const char* name = line + name_at;
      const size_t n = std::min(std::strcspn(name, "\n"), sizeof m.name - 1);
      std::memcpy(m.name, name, n);
      m.name[n] = '\0';
    }
    m.offset = offset;
    m.inode = inode;
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
