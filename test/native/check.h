// A minimal test harness for the addon's Node-free core: TEST(name) defines
// a case, CHECK(...) records a failure and goes on, REQUIRE(...) ends the
// case. The runner (main.cc) runs every case, or those whose name contains
// argv[1], and exits non-zero if any check failed.
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace check {

struct Case {
  const char* name;
  std::function<void()> body;
};

inline std::vector<Case>& Cases() {
  static std::vector<Case> cases;
  return cases;
}

inline int& Failures() {
  static int failures = 0;
  return failures;
}

struct Register {
  Register(const char* name, std::function<void()> body) { Cases().push_back({name, std::move(body)}); }
};

struct Abort {};

inline void Fail(const char* file, int line, const std::string& what) {
  ++Failures();
  std::printf("  FAILED %s:%d: %s\n", file, line, what.c_str());
}

}  // namespace check

#define CHECK_CONCAT2(a, b) a##b
#define CHECK_CONCAT(a, b) CHECK_CONCAT2(a, b)
#define TEST(name)                                                                  \
  static void CHECK_CONCAT(test_, __LINE__)();                                      \
  static check::Register CHECK_CONCAT(register_, __LINE__)(name, &CHECK_CONCAT(test_, __LINE__)); \
  static void CHECK_CONCAT(test_, __LINE__)()

#define CHECK(cond)                                     \
  do {                                                  \
    if (!(cond)) check::Fail(__FILE__, __LINE__, #cond); \
  } while (0)

#define CHECK_EQ(a, b)                                                                              \
  do {                                                                                              \
    const auto& check_a = (a);                                                                      \
    const auto& check_b = (b);                                                                      \
    if (!(check_a == check_b)) {                                                                    \
      check::Fail(__FILE__, __LINE__, std::string(#a " == " #b " (") + std::to_string(check_a) + " vs " + \
                                          std::to_string(check_b) + ")");                           \
    }                                                                                               \
  } while (0)

#define REQUIRE(cond)                                   \
  do {                                                  \
    if (!(cond)) {                                      \
      check::Fail(__FILE__, __LINE__, #cond);           \
      throw check::Abort();                             \
    }                                                   \
  } while (0)

// A Status with this code, and a message that contains `text`.
#define CHECK_STATUS(status, expected_code, text)                                                    \
  do {                                                                                              \
    const kvxfer::Status& check_s = (status);                                                       \
    if (check_s.code != (expected_code) || check_s.message.find(text) == std::string::npos) {       \
      check::Fail(__FILE__, __LINE__, std::string(#status " is ") + kvxfer::CodeName(check_s.code) + \
                                          " '" + check_s.message + "', expected " +                  \
                                          kvxfer::CodeName(expected_code) + " with '" + (text) + "'"); \
    }                                                                                               \
  } while (0)
