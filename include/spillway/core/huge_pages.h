// Memory for large buffers that are streamed through (interleaved weights, bandwidth
// probes): one allocation on a 2 MiB boundary, marked for transparent huge pages where the
// kernel offers them. A stream through huge pages crosses no 4 KiB page boundary (where
// hardware prefetchers stop) and needs few TLB entries: single-token decoding of the
// default model ran 1.22-1.25x faster with its weights in such a buffer
// (docs/performance.md, commit ccc9437).
#pragma once

#include <cstddef>
#include <memory>
#include <utility>

namespace spillway {

class HugePageBuffer {
 public:
  static constexpr size_t kAlignment = size_t{2} << 20;

  HugePageBuffer() = default;
  // At least `bytes` bytes (rounded up to a multiple of kAlignment), uninitialised. The
  // huge-page request is advice (madvise MADV_HUGEPAGE on Linux): where it is declined the
  // buffer is plain memory. std::bad_alloc when the memory cannot be had.
  explicit HugePageBuffer(size_t bytes);
  HugePageBuffer(HugePageBuffer&& o) noexcept
      : p_(std::move(o.p_)), size_(std::exchange(o.size_, size_t{0})) {}
  HugePageBuffer& operator=(HugePageBuffer&& o) noexcept {
    p_ = std::move(o.p_);
    size_ = std::exchange(o.size_, size_t{0});
    return *this;
  }

  std::byte* data() const { return p_.get(); }
  // The rounded size; 0 for an empty buffer.
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte, Free> p_;
  size_t size_ = 0;
};

}  // namespace spillway
