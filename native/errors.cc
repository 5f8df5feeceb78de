#include "errors.h"

#include "addon.h"

namespace kvxfer {

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kInvalidArg: return "ERR_INVALID_ARG";
    case Code::kNotRegistered: return "ERR_NOT_REGISTERED";
    case Code::kOutOfRange: return "ERR_OUT_OF_RANGE";
    case Code::kUnknownPeer: return "ERR_UNKNOWN_PEER";
    case Code::kBadMetadata: return "ERR_BAD_METADATA";
    case Code::kPeerUnreachable: return "ERR_PEER_UNREACHABLE";
    case Code::kTimeout: return "ERR_TIMEOUT";
    case Code::kAborted: return "ERR_ABORTED";
    case Code::kClosed: return "ERR_CLOSED";
    case Code::kBusy: return "ERR_BUSY";
    case Code::kEngine: return "ERR_ENGINE";
  }
  return "ERR_ENGINE";
}

Napi::Error MakeError(Napi::Env env, const Status& status) {
  Napi::Object details = Napi::Object::New(env);
  if (!status.engine_status.empty()) {
    details.Set("engineStatus", status.engine_status);
    details.Set("engineCode", status.engine_code);
  }
  auto* addon = env.GetInstanceData<KvxferAddon>();
  if (addon != nullptr && !addon->error_constructor.IsEmpty()) {
    Napi::Value error = addon->error_constructor.New(
        {Napi::String::New(env, CodeName(status.code)), Napi::String::New(env, status.message),
         details});
    return Napi::Error(env, error);
  }
  Napi::Error error = Napi::Error::New(env, status.message);
  error.Set("code", CodeName(status.code));
  return error;
}

void Throw(Napi::Env env, Code code, const std::string& message) {
  throw MakeError(env, Status::Error(code, message));
}

void Throw(Napi::Env env, const Status& status) { throw MakeError(env, status); }

}  // namespace kvxfer
