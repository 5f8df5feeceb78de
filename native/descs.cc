#include "descs.h"

#include <string>

namespace kvxfer {

Status DescListView::Parse(const uint8_t* data, size_t length, DescListView* out) {
  if (data == nullptr || length < kDescHeaderSize) {
    return Status::Error(Code::kInvalidArg, "descriptor list is shorter than its header");
  }
  uint32_t magic;
  std::memcpy(&magic, data, 4);
  if (magic != limits::kDescListMagic) {
    return Status::Error(Code::kInvalidArg, "descriptor list has a bad magic number");
  }
  uint16_t version;
  std::memcpy(&version, data + 4, 2);
  if (version != limits::kDescListVersion) {
    return Status::Error(Code::kInvalidArg,
                         "descriptor list version " + std::to_string(version) +
                             " is not supported (expected " +
                             std::to_string(limits::kDescListVersion) + ")");
  }
  uint32_t count;
  std::memcpy(&count, data + 8, 4);
  if (count > limits::kMaxDescriptors) {
    return Status::Error(Code::kInvalidArg, "descriptor list holds too many descriptors");
  }
  if (length != kDescHeaderSize + static_cast<size_t>(count) * kDescEntrySize) {
    return Status::Error(Code::kInvalidArg,
                         "descriptor list size does not match its count of " +
                             std::to_string(count));
  }
  DescListView view;
  view.entries_ = data + kDescHeaderSize;
  view.count_ = count;
  for (uint32_t i = 0; i < count; ++i) {
    Desc d = view.at(i);
    if (d.length == 0) {
      return Status::Error(Code::kInvalidArg,
                           "descriptor " + std::to_string(i) + " has length 0");
    }
    // The end may be exactly 2^64; anything beyond wraps.
    if (d.length - 1 > UINT64_MAX - d.address) {
      return Status::Error(Code::kInvalidArg,
                           "descriptor " + std::to_string(i) + " wraps around the address space");
    }
  }
  *out = view;
  return Status::Ok();
}

}  // namespace kvxfer
