// Decoding allocates nothing per token once warmed up (docs/architecture.md, KV storage).
// This file replaces the global operator new/delete of the test executable with
// versions that count calls, but only while an AllocationCounter is alive: outside one
// they behave like the defaults (malloc/free), so the other tests are unaffected. No
// other file of the test executable may replace them.
#include <gtest/gtest.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <memory>
#include <new>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace {

std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocations{0};

[[gnu::noinline]] void* counted_alloc(std::size_t size) {
  if (g_counting.load(std::memory_order_relaxed))
    g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (size == 0) size = 1;
  return std::malloc(size);
}

[[gnu::noinline]] void* counted_aligned_alloc(std::size_t size, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed))
    g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (align < sizeof(void*)) align = sizeof(void*);
  void* p = nullptr;
  if (posix_memalign(&p, align, size == 0 ? 1 : size) != 0) return nullptr;
  return p;
}

// Out of line, so that the compiler does not pair an inlined free() with operator new
// (-Wmismatched-new-delete).
[[gnu::noinline]] void release(void* p) noexcept {
  std::free(p);
}

}  // namespace

// Replacements of the global allocation functions (all forms, so that every new is paired
// with the matching delete below).
void* operator new(std::size_t size) {
  if (void* p = counted_alloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  if (void* p = counted_alloc(size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  return counted_alloc(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return counted_alloc(size);
}
void* operator new(std::size_t size, std::align_val_t a) {
  if (void* p = counted_aligned_alloc(size, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t a) {
  if (void* p = counted_aligned_alloc(size, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_aligned_alloc(size, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t size, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_aligned_alloc(size, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept {
  release(p);
}
void operator delete[](void* p) noexcept {
  release(p);
}
void operator delete(void* p, std::size_t) noexcept {
  release(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  release(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  release(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  release(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  release(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  release(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  release(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  release(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  release(p);
}

namespace spillway {
namespace {

// Counts the allocations of every thread (pool workers included) while alive. Not
// nestable.
class AllocationCounter {
 public:
  AllocationCounter() {
    g_allocations.store(0);
    g_counting.store(true);
  }
  ~AllocationCounter() { g_counting.store(false); }
  int64_t count() const { return g_allocations.load(); }
};

std::vector<TokenId> cycle_tokens(int64_t n) {
  std::vector<TokenId> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    t[static_cast<size_t>(i)] = static_cast<TokenId>((i * 37 + 5) % 259);
  return t;
}

TEST(AllocationCounter, SeesAllocations) {
  // The counter must be able to see an allocation, or the tests below prove nothing.
  int64_t n = 0;
  {
    AllocationCounter c;
    auto v = std::make_unique<std::vector<int>>(100);
    auto* raw = new char[10];
    delete[] raw;
    n = c.count();
  }
  EXPECT_GE(n, 3);
  int64_t outside = 0;
  {
    AllocationCounter c;
    outside = c.count();
  }
  std::vector<int> after(10);  // not counted: the counter is gone
  EXPECT_EQ(outside, 0);
  EXPECT_EQ(g_allocations.load(), 0);
}

struct DecodeCase {
  const char* policy;
  int64_t max_stream;  // pre-sizing of a growing cache
  int threads;
};

void PrintTo(const DecodeCase& c, std::ostream* os) {
  *os << c.policy << ", max_stream " << c.max_stream << ", " << c.threads << " thread(s)";
}

class DecodeAllocations : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeAllocations, NoneAfterWarmUp) {
  const DecodeCase& dc = GetParam();
  const std::string path = test::write_tiny_model(test::temp_dir());
  auto model = model::Model::load(path);
  constexpr int64_t kWarm = 48, kCounted = 64;
  SessionOptions so;
  so.policy = kv::PolicySpec(dc.policy);
  so.max_batch = 1;
  so.max_stream = dc.max_stream;
  so.threads = dc.threads;
  Session s(*model, so);
  const std::vector<TokenId> tokens = cycle_tokens(kWarm + kCounted);
  // Warm-up: every buffer reaches its size and bounded caches wrap around.
  for (int64_t i = 0; i < kWarm; ++i) s.feed(std::span<const TokenId>(&tokens[i], 1));
  int64_t allocations = 0;
  {
    AllocationCounter counter;
    for (int64_t i = kWarm; i < kWarm + kCounted; ++i)
      s.feed(std::span<const TokenId>(&tokens[i], 1));
    allocations = counter.count();
  }
  ASSERT_NE(s.last_logits(), nullptr);
  EXPECT_EQ(s.n_past(), kWarm + kCounted);
  EXPECT_EQ(allocations, 0) << allocations << " heap allocations while decoding " << kCounted
                            << " tokens under " << dc.policy << " with " << dc.threads
                            << " thread(s)";
}

INSTANTIATE_TEST_SUITE_P(
    Policies, DecodeAllocations,
    ::testing::Values(DecodeCase{"full", 128, 1}, DecodeCase{"window:16", 0, 1},
                      DecodeCase{"sink:4+12", 0, 1}, DecodeCase{"full", 128, 2},
                      DecodeCase{"window:16", 0, 2}, DecodeCase{"sink:4+12", 0, 2},
                      DecodeCase{"sink:4+12,kv=f16", 0, 2}, DecodeCase{"h2o:4+12", 0, 2},
                      DecodeCase{"tova:16", 0, 2}, DecodeCase{"detected:2+14", 0, 2},
                      DecodeCase{"nullsink:16", 0, 2},
                      DecodeCase{"nullsink:16,calib=const:1", 0, 1}),
    [](const ::testing::TestParamInfo<DecodeCase>& info) {
      std::string name = info.param.policy;
      for (char& ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return name + "_t" + std::to_string(info.param.threads);
    });

}  // namespace
}  // namespace spillway
