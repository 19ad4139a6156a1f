#include "spillway/core/huge_pages.h"

#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace spillway {

HugePageBuffer::HugePageBuffer(size_t bytes) {
  if (bytes == 0) return;
  if (bytes > SIZE_MAX - kAlignment) throw std::bad_alloc();
  const size_t size = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, size);
  if (p == nullptr) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  ::madvise(p, size, MADV_HUGEPAGE);  // advice: no error if declined
#endif
  p_.reset(static_cast<std::byte*>(p));
  size_ = size;
}

void HugePageBuffer::Free::operator()(std::byte* p) const {
  std::free(p);
}

}  // namespace spillway
