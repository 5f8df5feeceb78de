// Copies between this process and another process on the same host with one
// kernel copy: Linux's cross-memory attach (process_vm_writev and
// process_vm_readv), what UCX's cma transport does. The other process takes
// no part: no acknowledgement crosses a shared-memory queue, so its CPU (busy
// or asleep) is off the critical path, and its death mid-copy fails the copy
// (ESRCH) instead of leaving a receive queue half written.
//
// The kernel allows it where this process may ptrace the other one (same
// user, Yama's ptrace_scope 0, or 1 with an exception); EPERM otherwise.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace kvxfer {

// Spans are added in order and copied in batches of up to kMaxSpans
// (IOV_MAX); a short copy is resumed where it stopped, so the only failure is
// one the kernel reports for a span it cannot copy.
class ProcessCopy {
 public:
  static constexpr size_t kMaxSpans = 1024;

  ProcessCopy(pid_t pid, bool write) : pid_(pid), write_(write) {}

  // False once a copy failed (error() says how); later spans are ignored.
  bool Add(uintptr_t local, uintptr_t remote, size_t length);
  // Copies what is batched; false on failure.
  bool Finish();

  // errno of the failed copy, 0 if none: ESRCH (the process is gone), EPERM
  // (not allowed to reach it), EFAULT (an address not mapped there, or here).
  int error() const { return error_; }
  // The other process's address where the failed copy stopped.
  uintptr_t failed_remote() const { return failed_remote_; }

 private:
  bool CopyBatch();

  const pid_t pid_;
  const bool write_;
  iovec local_[kMaxSpans];
  iovec remote_[kMaxSpans];
  size_t count_ = 0;
  int error_ = 0;
  uintptr_t failed_remote_ = 0;
};

}  // namespace kvxfer
