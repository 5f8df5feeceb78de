// The memcpy baseline of `kvxfer bench`: how fast one thread copies between
// two page-aligned host buffers here. The bound a same-host transfer that is
// a single copy cannot beat.
//
// A module of its own (binding.gyp target kvxfer_bench, built into
// build/Release/bench/), not part of kvxfer.node: the library does not ship
// benchmark code. It needs nothing from the addon.
#include <napi.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>

namespace {

constexpr double kMaxBytes = 16.0 * 1024 * 1024 * 1024;  // 16 GiB per buffer
constexpr double kMaxIterations = 1e9;

// Page-aligned anonymous memory, unmapped on scope exit.
class Pages {
 public:
  explicit Pages(size_t length) : length_(length) {
    void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data_ = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
  }
  Pages(const Pages&) = delete;
  Pages& operator=(const Pages&) = delete;
  ~Pages() {
    if (data_ != nullptr) munmap(data_, length_);
  }
  uint8_t* data() const { return data_; }

 private:
  size_t length_;
  uint8_t* data_;
};

double ToCount(Napi::Env env, const Napi::Value& value, const char* what, double max) {
  if (!value.IsNumber()) throw Napi::TypeError::New(env, std::string("memcpyBench: ") + what + " must be a number");
  const double n = value.As<Napi::Number>().DoubleValue();
  if (!(n >= 1 && n <= max) || n != static_cast<double>(static_cast<uint64_t>(n))) {
    throw Napi::RangeError::New(env, std::string("memcpyBench: ") + what + " must be a positive integer up to " +
                                         std::to_string(static_cast<uint64_t>(max)));
  }
  return n;
}

// memcpyBench(bytes, iterations) -> nanoseconds for `iterations` copies of
// `bytes` (after one untimed copy that faults the pages in). Runs on the
// calling thread: callers keep each call short.
Napi::Value MemcpyBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto bytes = static_cast<size_t>(ToCount(env, info[0], "bytes", kMaxBytes));
  const auto iterations = static_cast<uint64_t>(ToCount(env, info[1], "iterations", kMaxIterations));
  Pages src(bytes), dst(bytes);
  if (src.data() == nullptr || dst.data() == nullptr) {
    throw Napi::Error::New(env, "memcpyBench: cannot map 2 x " + std::to_string(bytes) + " bytes");
  }
  // Fault every page in (and give the source non-zero bytes) outside the clock.
  for (size_t i = 0; i < bytes; ++i) src.data()[i] = static_cast<uint8_t>(i * 131 + 7);
  std::memcpy(dst.data(), src.data(), bytes);

  const auto start = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < iterations; ++i) {
    std::memcpy(dst.data(), src.data(), bytes);
    // The compiler must not merge or drop the copies.
    asm volatile("" : : "r"(dst.data()) : "memory");
  }
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count();
  if (dst.data()[bytes - 1] != src.data()[bytes - 1]) {
    throw Napi::Error::New(env, "memcpyBench: the copy did not arrive");
  }
  return Napi::Number::New(env, static_cast<double>(ns));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("memcpyBench", Napi::Function::New(env, MemcpyBench, "memcpyBench"));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvxfer_bench, Init)
