#include "shared_pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace kvxfer {

namespace {

constexpr char kFileName[] = "kvxfer-shared";
constexpr char kMappedName[] = "/memfd:kvxfer-shared";
// Moved this much at a time: the bytes are in two places only for one
// chunk, not for the whole buffer.
constexpr uint64_t kMoveChunk = 64ull << 20;
constexpr uint64_t kPresent = 1ull << 63;
constexpr uint64_t kSwapped = 1ull << 62;
uint64_t PageSize() {
  static const uint64_t size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return size;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

// Copies `length` bytes into pages not yet faulted in, faulting them all in
// first: on a VM a page fault per 4 KiB costs up to four times the copy
// (1 GiB back into anonymous memory: 3.9 s against 0.8 s populated). A
// kernel without MADV_POPULATE_WRITE (before 5.14) faults them one by one.
void CopyIntoFresh(uint8_t* to, const uint8_t* from, uint64_t length) {
  const uint64_t page = PageSize();
  auto* first = reinterpret_cast<uint8_t*>(reinterpret_cast<uintptr_t>(to) / page * page);
  madvise(first, static_cast<size_t>(to + length - first), MADV_POPULATE_WRITE);
  std::memcpy(to, from, length);
}


class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Anonymous memory a process keeps for itself (the heap, malloc's mappings),
// or pages an earlier registration already moved into a file of ours.
bool Movable(const MappedRange& m) {
  if (m.perms[0] != 'r' || m.perms[1] != 'w') return false;
  if (m.perms[3] == 's') return std::strncmp(m.name, kMappedName, sizeof kMappedName - 1) == 0;
  if (m.inode != 0) return false;
  return m.name[0] == '\0' || std::strcmp(m.name, "[heap]") == 0 || std::strncmp(m.name, "[anon:", 6) == 0;
}

// `in_files`: some of it is in a file already, whose pages the page map
// shows only while they are mapped.
bool AllMovable(uint64_t begin, uint64_t end, bool* in_files) {
  uint64_t reached = begin;
  bool movable = true;
  const bool read = ForEachMapping([&](const MappedRange& m) {
    if (m.to <= reached) return true;
    if (m.from > reached || !Movable(m)) {
      movable = false;
      return false;
    }
    *in_files |= m.perms[3] == 's';
    reached = m.to;
    return reached < end;
  });
  return read && movable && reached >= end;
}

// Copies the pages of [from, from + length) that hold bytes (resident or
// swapped out) to `to`: an anonymous page never touched reads as zeros,
// which the file's hole does too. Everything where the page map cannot be
// read (or is not asked: pagemap < 0).
void CopyTouched(uint8_t* to, const uint8_t* from, uint64_t length, int pagemap) {
  const uint64_t page = PageSize();
  const uint64_t pages = length / page;
  std::vector<uint64_t> entries(pages);
  const off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(from) / page * sizeof(uint64_t));
  if (pagemap < 0 || pread(pagemap, entries.data(), pages * sizeof(uint64_t), at) !=
                         static_cast<ssize_t>(pages * sizeof(uint64_t))) {
    CopyIntoFresh(to, from, length);
    return;
  }
  uint64_t i = 0;
  while (i < pages) {
    if ((entries[i] & (kPresent | kSwapped)) == 0) {
      ++i;
      continue;
    }
    uint64_t j = i + 1;
    while (j < pages && (entries[j] & (kPresent | kSwapped)) != 0) ++j;
    CopyIntoFresh(to + i * page, from + i * page, (j - i) * page);
    i = j;
  }
}

}  // namespace

struct SharedFile {
  int fd = -1;
  uint64_t inode = 0;
  uint64_t begin = 0;
  uint64_t length = 0;
  uint32_t users = 0;
};

struct SharedPagesRegistry {
  std::mutex mutex;
  std::vector<HostRegistration*> registrations;
  std::vector<std::unique_ptr<SharedFile>> files;

  static SharedPagesRegistry& Get() {
    // Never destroyed: registrations may outlive static destruction at exit.
    static auto* registry = new SharedPagesRegistry();
    return *registry;
  }

  // Whether another registration covers any page of [begin, end).
  bool Covered(uint64_t begin, uint64_t end) const {
    const uint64_t page = PageSize();
    for (const HostRegistration* r : registrations) {
      const uint64_t first = r->address_ / page * page;
      const uint64_t last = (r->address_ + r->length_ + page - 1) / page * page;
      if (first < end && begin < last) return true;
    }
    return false;
  }

  // The file whose pages hold all of [begin, end), or null.
  SharedFile* Holding(uint64_t begin, uint64_t end) const {
    for (const std::unique_ptr<SharedFile>& f : files) {
      if (f->begin <= begin && end <= f->begin + f->length) return f.get();
    }
    return nullptr;
  }

  // Moves [begin, end) into a new file; null where any step fails (the
  // chunks moved so far stay in the file: the memory is the same either
  // way).
  std::unique_ptr<SharedFile> Move(uint64_t begin, uint64_t end, bool in_files) {
    // Sealed against shrinking: a peer that maps the file could otherwise
    // truncate it under our mapping, and the next copy would die of SIGBUS.
    Fd fd(static_cast<int>(syscall(SYS_memfd_create, kFileName, MFD_CLOEXEC | MFD_ALLOW_SEALING)));
    if (fd.get() < 0) return nullptr;
    const uint64_t length = end - begin;
    struct stat st {};
    if (ftruncate(fd.get(), static_cast<off_t>(length)) != 0 ||
        fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 || fstat(fd.get(), &st) != 0) {
      return nullptr;
    }
    Fd pagemap(in_files ? -1 : open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    for (uint64_t done = 0; done < length; done += kMoveChunk) {
      const uint64_t n = std::min(kMoveChunk, length - done);
      auto* at = reinterpret_cast<uint8_t*>(begin + done);
      void* staged = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), static_cast<off_t>(done));
      if (staged == MAP_FAILED) return nullptr;
      CopyTouched(static_cast<uint8_t*>(staged), at, n, pagemap.get());
      if (!MoveMapping(staged, at, n, fd.get(), done)) return nullptr;
    }
    auto file = std::make_unique<SharedFile>();
    file->inode = st.st_ino;
    file->begin = begin;
    file->length = length;
    file->fd = fd.release();
    return file;
  }

  // The file's pages back to private memory, their bytes kept (its holes
  // become untouched anonymous pages: zeros either way), so that the
  // memory is what it was before it was shared: freed pages no longer
  // shared, and a peer's late write into the file no longer lands in it.
  // False where a step fails; the pages not yet moved stay in the file.
  static bool MoveBack(const SharedFile& file) {
    for (uint64_t done = 0; done < file.length; done += kMoveChunk) {
      const uint64_t n = std::min(kMoveChunk, file.length - done);
      auto* at = reinterpret_cast<uint8_t*>(file.begin + done);
      void* staged = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (staged == MAP_FAILED) return false;
      const auto end = static_cast<off_t>(done + n);
      for (off_t data = lseek(file.fd, static_cast<off_t>(done), SEEK_DATA); data >= 0 && data < end;) {
        off_t hole = lseek(file.fd, data, SEEK_HOLE);
        if (hole < 0 || hole > end) hole = end;
        CopyIntoFresh(static_cast<uint8_t*>(staged) + (data - static_cast<off_t>(done)),
                      at + (data - static_cast<off_t>(done)), static_cast<uint64_t>(hole - data));
        data = hole < end ? lseek(file.fd, hole, SEEK_DATA) : end;
      }
      if (!MoveMapping(staged, at, n, file.fd, done)) return false;
    }
    return true;
  }

  // Moves a mapping over `at`. mremap unmaps the destination before it
  // moves, and may still fail after that: then the file (which has the
  // bytes) is mapped there again rather than leave a hole.
  static bool MoveMapping(void* staged, uint8_t* at, uint64_t n, int fd, uint64_t offset) {
    if (mremap(staged, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, at) != MAP_FAILED) return true;
    mmap(at, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, static_cast<off_t>(offset));
    munmap(staged, n);
    return false;
  }
};

std::unique_ptr<HostRegistration> HostRegistration::Add(uint64_t address, uint64_t length, bool share) {
  std::unique_ptr<HostRegistration> registration(new HostRegistration(address, length));
  SharedPagesRegistry& registry = SharedPagesRegistry::Get();
  std::unique_lock<std::mutex> lock(registry.mutex);
  const uint64_t page = PageSize();
  const uint64_t begin = (address + page - 1) / page * page;
  const uint64_t end = (address + length) / page * page;
  SharedFile* file = nullptr;
  bool move = false;
  if (share && end > begin && end - begin >= kSharedPagesMinBytes) {
    file = registry.Holding(begin, end);
    move = file == nullptr && !registry.Covered(begin, end) && registry.files.size() < kMaxSharedFiles;
  }
  // Recorded before the pages move: another registration of them meanwhile
  // finds them covered and leaves them alone. The copy runs unlocked.
  registry.registrations.push_back(registration.get());
  if (move) {
    lock.unlock();
    bool in_files = false;
    std::unique_ptr<SharedFile> moved = AllMovable(begin, end, &in_files) ? registry.Move(begin, end, in_files) : nullptr;
    lock.lock();
    if (moved) {
      file = moved.get();
      registry.files.push_back(std::move(moved));
    }
  }
  if (file != nullptr) {
    ++file->users;
    registration->file_ = file;
    registration->shared_ = {begin, end - begin, begin - file->begin, file->inode, static_cast<uint32_t>(file->fd)};
  }
  return registration;
}

HostRegistration::~HostRegistration() {
  SharedPagesRegistry& registry = SharedPagesRegistry::Get();
  std::unique_lock<std::mutex> lock(registry.mutex);
  std::unique_ptr<SharedFile> last;
  if (file_ != nullptr && --file_->users == 0) {
    auto& files = registry.files;
    auto it = std::find_if(files.begin(), files.end(), [this](const std::unique_ptr<SharedFile>& f) { return f.get() == file_; });
    last = std::move(*it);
    files.erase(it);
  }
  if (last) {
    // Still recorded while its pages move back, unlocked.
    lock.unlock();
    SharedPagesRegistry::MoveBack(*last);
    close(last->fd);
    lock.lock();
  }
  auto& all = registry.registrations;
  all.erase(std::find(all.begin(), all.end(), this));
}

PeerPages& PeerPages::operator=(PeerPages&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) munmap(data_, length_);
    data_ = o.data_;
    length_ = o.length_;
    o.data_ = nullptr;
  }
  return *this;
}

PeerPages::~PeerPages() {
  if (data_ != nullptr) munmap(data_, length_);
}

PeerPages PeerPages::Map(pid_t pid, const SharedPagesInfo& info, std::vector<MappedRange>* peer_maps) {
  const uint64_t page = PageSize();
  if (info.length == 0 || info.begin % page != 0 || info.length % page != 0 || info.offset % page != 0 ||
      info.fd > static_cast<uint32_t>(INT32_MAX)) {
    return {};
  }
  Fd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  if (pidfd.get() < 0) return {};
  Fd fd(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), static_cast<int>(info.fd), 0)));
  if (fd.get() < 0) return {};
  // A memfd (only shared-memory files answer F_GET_SEALS) sealed against
  // shrinking (else the peer could truncate it under our copies: SIGBUS),
  // the one named, long enough.
  struct stat st {};
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_ino != info.inode || seals < 0 ||
      (seals & F_SEAL_SHRINK) == 0 || static_cast<uint64_t>(st.st_size) < info.offset ||
      static_cast<uint64_t>(st.st_size) - info.offset < info.length) {
    return {};
  }
  if (peer_maps->empty()) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/maps", static_cast<int>(pid));
    ForEachMapping(path, [&](const MappedRange& m) {
      peer_maps->push_back(m);
      return true;
    });
  }
  // What the peer says is this file at those addresses, from end to end.
  const uint64_t end = info.begin + info.length;
  uint64_t reached = info.begin;
  for (const MappedRange& m : *peer_maps) {
    if (m.to <= reached) continue;
    if (m.from > reached) break;
    if (m.perms[3] != 's' || m.inode != st.st_ino || m.dev_major != major(st.st_dev) ||
        m.dev_minor != minor(st.st_dev) || m.offset + (reached - m.from) != info.offset + (reached - info.begin)) {
      break;
    }
    reached = m.to;
    if (reached >= end) break;
  }
  if (reached < end) return {};
  void* mapped = mmap(nullptr, info.length, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), static_cast<off_t>(info.offset));
  if (mapped == MAP_FAILED) return {};
  return PeerPages(static_cast<uint8_t*>(mapped), info.length);
}

}  // namespace kvxfer
