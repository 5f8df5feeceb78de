// Registered JS memory that peers on this host copy with memcpy.
//
// An engine reaches a registered Buffer of another process on this host only
// through the kernel's cross-process copy (process_copy.h), and some kernels
// run that at a quarter of memcpy's speed: they pin each 4 KiB page of the
// other process before they copy it. Memory in a shared file that the peer
// maps is reached with one memcpy, as allocate()'s is. So the whole pages of
// a large registered buffer are moved, once, into a memfd of this process:
// their bytes are copied into the file and the file is mapped over them at
// the same addresses (mremap), so the buffer, V8 and every pointer into it
// see the same bytes at the same place. A peer's engine takes the file with
// pidfd_getfd (allowed where the kernel copy is: the same ptrace check),
// makes sure /proc/<pid>/maps maps that very file at those addresses, and
// maps it (PeerPages). The bytes before the first whole page and after the
// last stay private and go by the kernel copy.
//
// When the last registration of the pages goes, they move back to private
// memory the same way (the file's data copied out, its holes left as
// untouched pages), so the buffer is what it was: memory the allocator may
// free or reuse unshared, and a peer's late write into the file (before it
// heard of the deregistration) no longer lands in it. The file is sealed
// against shrinking: a peer that truncated it under our mapping would make
// our next copy die of SIGBUS.
//
// What this costs and where it is off: a copy of the pages' written bytes
// on the JS thread when the buffer is registered and again when its last
// registration goes (pages never touched are skipped: the file reads as
// zeros there too); the copy runs outside the registry's lock. Nothing where another live
// registration of this process already covers some of the pages (moving
// pages another registration may have pinned, for RDMA, would part it from
// the memory), where the pages are not private anonymous read-write memory,
// or for a SharedArrayBuffer (another thread may write it while the bytes
// are copied). A buffer that another thread of this process writes into
// while it is being registered (a pending fs.read into it) may lose those
// writes: registering memory under a pending write is a race already. Pages
// that other code pinned for DMA (cudaHostRegister, io_uring fixed buffers,
// another RDMA library) must not move: its device would keep the old pages.
// That cannot be seen from here, so it is documented, and
// shareRegisteredMemory: false turns moving off.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine.h"
#include "host_memory.h"

namespace kvxfer {

// Buffers with fewer whole pages than this are left where they are: the
// kernel copy costs them little, and each moved buffer holds a descriptor.
constexpr uint64_t kSharedPagesMinBytes = 1 << 20;
// Moved buffers whose pages are shared at one time (a descriptor each).
constexpr size_t kMaxSharedFiles = 512;

// One registration of host memory of this process. Every registration of
// host memory, of every agent and engine, is recorded (process wide), so
// that pages another registration covers are never moved.
class HostRegistration {
 public:
  // `share`: move the whole pages into a shared file where they qualify.
  static std::unique_ptr<HostRegistration> Add(uint64_t address, uint64_t length, bool share);
  ~HostRegistration();
  HostRegistration(const HostRegistration&) = delete;
  HostRegistration& operator=(const HostRegistration&) = delete;

  // What a peer on this host needs to map the shared pages; length 0: none.
  const SharedPagesInfo& shared() const { return shared_; }

 private:
  HostRegistration(uint64_t address, uint64_t length) : address_(address), length_(length) {}

  const uint64_t address_;
  const uint64_t length_;
  SharedPagesInfo shared_;
  struct SharedFile* file_ = nullptr;  // held while shared_ is set
  friend struct SharedPagesRegistry;
};

// A peer's shared pages mapped into this process; unmapped with it.
class PeerPages {
 public:
  PeerPages() = default;
  PeerPages(PeerPages&& o) noexcept : data_(o.data_), length_(o.length_) { o.data_ = nullptr; }
  PeerPages& operator=(PeerPages&& o) noexcept;
  ~PeerPages();

  uint8_t* data() const { return data_; }

  // Maps the pages `info` describes in process `pid` where they check out:
  // the descriptor names a memfd with that inode, and `pid`'s maps show that
  // file at those addresses and offsets. Empty otherwise (the kernel copy
  // then reaches the memory). `peer_maps` caches that process's mappings
  // between calls (filled on first use).
  static PeerPages Map(pid_t pid, const SharedPagesInfo& info, std::vector<MappedRange>* peer_maps);

 private:
  PeerPages(uint8_t* data, uint64_t length) : data_(data), length_(length) {}
  uint8_t* data_ = nullptr;
  uint64_t length_ = 0;
};

}  // namespace kvxfer
