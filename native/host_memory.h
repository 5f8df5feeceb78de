// This process's own mappings (/proc/self/maps), for memory that callers
// and peers only name by address: a range that is not mapped, or not
// read-write, must be refused when it is registered, not found by a copy
// that faults the worker.
#pragma once

#include <cstdint>
#include <functional>

#include "status.h"

namespace kvxfer {

struct MappedRange {
  uintptr_t from = 0;
  uintptr_t to = 0;  // one past the end
  char perms[5] = {};  // "rw-p", "r--s", ...
  uint64_t offset = 0;  // in the mapped file
  unsigned dev_major = 0;
  unsigned dev_minor = 0;
  uint64_t inode = 0;  // 0: anonymous memory
  char name[48] = {};  // the start of the path or "[heap]"-style name; empty: none
};

// Visits the mappings of a maps file (/proc/self/maps, or another process's)
// in address order until `visit` returns false; false when it cannot be read.
bool ForEachMapping(const char* maps_path, const std::function<bool(const MappedRange&)>& visit);
inline bool ForEachMapping(const std::function<bool(const MappedRange&)>& visit) {
  return ForEachMapping("/proc/self/maps", visit);
}

// Ok when [address, address + length) is mapped readable and writable from
// end to end (across adjacent mappings); ERR_INVALID_ARG saying where it is
// not. Ok where /proc/self/maps cannot be read (nothing to check against).
Status CheckHostMemory(uint64_t address, uint64_t length);

}  // namespace kvxfer
