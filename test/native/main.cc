#include <cstdio>
#include <cstring>

#include "check.h"

int main(int argc, char** argv) {
  // A sanitizer report aborts the process: what was printed before it stays.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const char* filter = argc > 1 ? argv[1] : "";
  int ran = 0;
  for (const check::Case& c : check::Cases()) {
    if (std::strstr(c.name, filter) == nullptr) continue;
    const int before = check::Failures();
    try {
      c.body();
    } catch (const check::Abort&) {
    } catch (const std::exception& e) {
      check::Fail(__FILE__, __LINE__, std::string("exception: ") + e.what());
    }
    std::printf("%s %s\n", check::Failures() == before ? "ok" : "FAIL", c.name);
    ++ran;
  }
  std::printf("%d cases, %d failed checks\n", ran, check::Failures());
  return ran == 0 || check::Failures() > 0 ? 1 : 0;
}
