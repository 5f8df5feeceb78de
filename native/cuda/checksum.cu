// The device side of kvxfer/cuda's checksum (native/cuda/cuda_helper.cc has
// the host twin, which must compute the same value): the wrapping sum over
// every 8-byte word i of Mix(word ^ (i * kGolden)). A sum does not depend on
// the order the threads add in, so the result is deterministic; Mix makes a
// moved, swapped or zeroed word change it.
//
// Built to PTX by scripts/gen-cuda-ptx.sh (native/cuda/checksum_ptx.h is
// its output, committed), so the addon needs no CUDA compiler; the driver
// compiles the PTX for whatever GPU it finds.

constexpr unsigned long long kGolden = 0x9E3779B97F4A7C15ull;

__device__ unsigned long long Mix(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

extern "C" __global__ void kvxfer_checksum(const unsigned long long* words, unsigned long long count,
                                           unsigned long long* sum) {
  unsigned long long acc = 0;
  const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  for (unsigned long long i = static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    acc += Mix(words[i] ^ (i * kGolden));
  }
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if ((threadIdx.x & 31) == 0) atomicAdd(sum, acc);
}
