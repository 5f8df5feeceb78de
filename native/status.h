// Results that cross threads: plain C++, no V8 types, so the owner thread can
// build them and the JS thread can turn them into KvxferError later.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "protocol.h"

namespace kvxfer {

enum class Code : uint8_t {
  kOk,
#define KVXFER_ENUMERATOR(name, text, doc) k##name,
  KVXFER_ERROR_CODES(KVXFER_ENUMERATOR)
#undef KVXFER_ENUMERATOR
};

// The stable public name, e.g. "ERR_INVALID_ARG".
inline const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "OK";
#define KVXFER_CASE(name, text, doc) \
  case Code::k##name:           \
    return text;
      KVXFER_ERROR_CODES(KVXFER_CASE)
#undef KVXFER_CASE
  }
  return "ERR_ENGINE";
}

struct Status {
  Code code = Code::kOk;
  std::string message;
  // The engine's own name and number for the failure ("UCS_ERR_CONNECTION_RESET",
  // -25); empty when the failure was found by kvxfer itself.
  std::string engine_status;
  int engine_code = 0;

  bool ok() const { return code == Code::kOk; }

  static Status Ok() { return Status(); }
  static Status Error(Code code, std::string message) {
    Status s;
    s.code = code;
    s.message = std::move(message);
    return s;
  }
  static Status Engine(Code code, std::string message, std::string engine_status,
                       int engine_code) {
    Status s = Error(code, std::move(message));
    s.engine_status = std::move(engine_status);
    s.engine_code = engine_code;
    return s;
  }
};

}  // namespace kvxfer
