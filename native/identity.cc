#include "identity.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

namespace kvxfer {

namespace {

std::array<uint8_t, 16> ReadBootId() {
  std::array<uint8_t, 16> id{};
  std::ifstream file("/proc/sys/kernel/random/boot_id");
  std::string text;
  if (!std::getline(file, text)) return id;
  size_t n = 0;
  for (size_t i = 0; i + 1 < text.size() && n < id.size();) {
    if (text[i] == '-') {
      ++i;
      continue;
    }
    unsigned byte = 0;
    if (std::sscanf(text.c_str() + i, "%2x", &byte) != 1) return {};
    id[n++] = static_cast<uint8_t>(byte);
    i += 2;
  }
  return n == id.size() ? id : std::array<uint8_t, 16>{};
}

uint64_t PidNamespace() {
  struct stat st;
  return stat("/proc/self/ns/pid", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

}  // namespace

uint64_t ProcessStartTime(uint32_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%u/stat", pid);
  std::ifstream file(path);
  std::string line;
  if (!std::getline(file, line)) return 0;
  // The command name (field 2) is in parentheses and may hold spaces or
  // parentheses itself: count fields from the last ')'.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  // Fields 3 .. 21, then 22: starttime.
  for (int i = 3; i <= 21; ++i) {
    if (!(rest >> field)) return 0;
  }
  uint64_t start = 0;
  return (rest >> start) ? start : 0;
}

ProcessIdentity NewIdentity() {
  static const std::array<uint8_t, 16> boot_id = ReadBootId();
  ProcessIdentity id;
  std::random_device random;
  do {
    id.incarnation = (static_cast<uint64_t>(random()) << 32) ^ random();
  } while (id.incarnation == 0);
  id.boot_id = boot_id;
  id.pid = static_cast<uint32_t>(getpid());
  id.start_time = ProcessStartTime(id.pid);
  id.pid_namespace = PidNamespace();
  return id;
}

std::string Hex64(uint64_t value) {
  char text[20];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

}  // namespace kvxfer
