// libFuzzer target: DescListView::Parse, the packed descriptor lists peers
// send (native/descs.h). Whatever the bytes, it either refuses them or gives
// a view whose every entry is non-empty, does not wrap around, and lies in
// the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "descs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvxfer::DescListView view;
  if (!kvxfer::DescListView::Parse(data, size, &view).ok()) return 0;
  if (kvxfer::kDescHeaderSize + static_cast<size_t>(view.count()) * kvxfer::kDescEntrySize != size) std::abort();
  for (uint32_t i = 0; i < view.count(); ++i) {
    const kvxfer::Desc d = view.at(i);
    if (d.length == 0 || d.length - 1 > UINT64_MAX - d.address) std::abort();
  }
  return 0;
}
