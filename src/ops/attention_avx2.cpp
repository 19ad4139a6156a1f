// AVX2 attention piece kernel (with FMA and F16C for f16 caches): attention_piece.h's
// kernel with 8-lane vectors (Avx2F32), value columns in slices of 16. Compiled for AVX2
// by target attributes and called only after a CPU check (attention.cpp). Uses no
// standard-library templates (see matmul_avx2.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"
#include "spillway/ops/attention.h"

#include "target_avx2_begin.h"

#include "attention_piece.h"
#include "simd_avx2.h"

namespace spillway::ops::detail {

namespace {

// AVX2: value columns 16 at a time (2 vectors), every head size at run time.
template <DType T>
struct Avx2Shape {
  static void run(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                  int64_t total, const void* k, const void* v, float* part) {
    piece<Avx2F32, 2, T, 0>(s, kv_head, sub, n_sub, total, k, v, part);
  }
};

}  // namespace

void attend_piece_avx2(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                       int64_t total, const void* k, const void* v, float* part) {
  attend_piece_of<Avx2Shape>(s, kv_head, sub, n_sub, total, k, v, part);
}

}  // namespace spillway::ops::detail

#include "target_end.h"
