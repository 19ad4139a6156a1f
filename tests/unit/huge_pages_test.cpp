#include "spillway/core/huge_pages.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <utility>

namespace spillway {
namespace {

TEST(HugePageBuffer, RoundsUpToWholeAlignedUnits) {
  const HugePageBuffer empty;
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_EQ(HugePageBuffer(0).data(), nullptr);

  constexpr size_t kA = HugePageBuffer::kAlignment;
  for (size_t bytes : {size_t{1}, kA - 1, kA, kA + 1, 3 * kA + 17}) {
    HugePageBuffer b(bytes);
    ASSERT_NE(b.data(), nullptr) << bytes;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % kA, 0u) << bytes;
    EXPECT_EQ(b.size() % kA, 0u) << bytes;
    EXPECT_GE(b.size(), bytes);
    EXPECT_LT(b.size() - bytes, kA) << bytes;
    // Every byte is usable (the sanitizer build checks the bounds).
    std::memset(b.data(), 0x5A, b.size());
    EXPECT_EQ(static_cast<unsigned char>(b.data()[b.size() - 1]), 0x5Au);
  }
}

TEST(HugePageBuffer, MovesItsMemoryAndRefusesImpossibleSizes) {
  HugePageBuffer a(100);
  std::byte* p = a.data();
  HugePageBuffer b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.size(), HugePageBuffer::kAlignment);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): what a move leaves
  EXPECT_EQ(a.size(), 0u);       // NOLINT(bugprone-use-after-move)
  a = std::move(b);
  EXPECT_EQ(a.data(), p);
  EXPECT_EQ(b.size(), 0u);  // NOLINT(bugprone-use-after-move)
  EXPECT_THROW(HugePageBuffer(SIZE_MAX), std::bad_alloc);
  EXPECT_THROW(HugePageBuffer(SIZE_MAX - HugePageBuffer::kAlignment + 2), std::bad_alloc);
}

}  // namespace
}  // namespace spillway
