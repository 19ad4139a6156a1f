// AVX-512 attention piece kernel (f32, f16 or q8_0 caches): attention_piece.h's kernel
// with 16-lane vectors (Avx512F32: each key's products folded to 8 lanes, then reduced as
// AVX2 reduces), value columns in slices of 64 (or 32), the head sizes 64 and 128 compiled
// in so that their query rows stay in registers across the keys. Needs head_dim % 32 == 0.
// Compiled for AVX-512 by target attributes and called only after a CPU check
// (kernels.cpp). Uses no standard-library templates (see matmul_avx2.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"
#include "spillway/ops/attention.h"

#include "target_avx512_begin.h"

#include "attention_piece.h"
#include "simd_avx512.h"

namespace spillway::ops::detail {

namespace {

// AVX-512: value columns in slices of 64 (4 vectors) where head_dim % 64 == 0, else 32,
// with the head sizes 64 and 128 compiled in (their query rows stay in registers).
template <DType T>
struct Avx512Shape {
  static void run(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                  int64_t total, const void* k, const void* v, float* part) {
    switch (s.head_dim) {
      case 64:
        piece<Avx512F32, 4, T, 64>(s, kv_head, sub, n_sub, total, k, v, part);
        break;
      case 128:
        piece<Avx512F32, 4, T, 128>(s, kv_head, sub, n_sub, total, k, v, part);
        break;
      default:
        if (s.head_dim % 64 == 0) {
          piece<Avx512F32, 4, T, 0>(s, kv_head, sub, n_sub, total, k, v, part);
        } else {
          piece<Avx512F32, 2, T, 0>(s, kv_head, sub, n_sub, total, k, v, part);
        }
        break;
    }
  }
};

}  // namespace

void attend_piece_avx512(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                         int64_t total, const void* k, const void* v, float* part) {
  attend_piece_of<Avx512Shape>(s, kv_head, sub, n_sub, total, k, v, part);
}

}  // namespace spillway::ops::detail

#include "target_end.h"
