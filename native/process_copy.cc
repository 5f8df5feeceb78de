#include "process_copy.h"

#include <cerrno>
#include <initializer_list>

namespace kvxfer {

bool ProcessCopy::Add(uintptr_t local, uintptr_t remote, size_t length) {
  if (error_ != 0) return false;
  if (length == 0) return true;
  local_[count_] = {reinterpret_cast<void*>(local), length};
  remote_[count_] = {reinterpret_cast<void*>(remote), length};
  if (++count_ == kMaxSpans) return CopyBatch();
  return true;
}

bool ProcessCopy::Finish() {
  if (error_ != 0) return false;
  return count_ == 0 || CopyBatch();
}

bool ProcessCopy::CopyBatch() {
  // Local and remote spans pair up one to one, so both arrays resume at the
  // same span and offset after a short copy.
  size_t first = 0;
  while (first < count_) {
    const size_t n = count_ - first;
    const ssize_t copied = write_ ? process_vm_writev(pid_, local_ + first, n, remote_ + first, n, 0)
                                  : process_vm_readv(pid_, local_ + first, n, remote_ + first, n, 0);
    if (copied < 0 && errno == EINTR) continue;
    if (copied <= 0) {
      // Nothing moved: the kernel's reason, or EFAULT for a span it stopped
      // at without one.
      error_ = copied < 0 ? errno : EFAULT;
      failed_remote_ = reinterpret_cast<uintptr_t>(remote_[first].iov_base);
      count_ = 0;
      return false;
    }
    auto left = static_cast<size_t>(copied);
    while (first < count_ && left >= remote_[first].iov_len) left -= remote_[first++].iov_len;
    if (left > 0) {
      for (iovec* v : {&local_[first], &remote_[first]}) {
        v->iov_base = static_cast<char*>(v->iov_base) + left;
        v->iov_len -= left;
      }
    }
  }
  count_ = 0;
  return true;
}

}  // namespace kvxfer
