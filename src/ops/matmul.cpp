// Activation quantization, the matmul entries of the kernel table (kernels.h) and the
// split of products over threads.
#include "spillway/ops/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "kernels.h"
#include "spillway/core/error.h"
#include "spillway/core/quant.h"
#include "spillway/ops/ops.h"

namespace spillway::ops {

using detail::MatmulKernels;
using detail::TileFn;

namespace {

// Rounds to nearest, ties to even (the rounding of the SIMD conversions), into
// [-127, 127]. Total: NaN gives 0 and out-of-range values the nearer bound (activations
// from a file with inf/NaN weights, or a block so small that 127 / amax overflows to inf,
// must not reach an undefined float-to-int conversion).
inline int32_t round_to_int(float v) {
  if (!(v == v)) return 0;
  return static_cast<int32_t>(std::nearbyint(std::clamp(v, -127.0f, 127.0f)));
}

}  // namespace

// One row of x into Q8A blocks (see matmul_internal.h): d = amax / 127.
void detail::quantize_q8a_scalar(const float* x, int64_t cols, std::byte* out) {
  const int64_t nb = cols / kQK;
  auto* qs = reinterpret_cast<int8_t*>(out);
  auto* ds = reinterpret_cast<float*>(out + nb * 32);
  auto* ss = reinterpret_cast<float*>(out + nb * 36);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kQK;
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const int32_t q = std::clamp(round_to_int(xb[j] * id), -127, 127);
      qs[b * kQK + j] = static_cast<int8_t>(q);
      sum += q;
    }
    ds[b] = d;
    ss[b] = d * static_cast<float>(sum);
  }
}

// One row of x into Q8_K blocks: d = amax / 127, bsums over groups of 16.
void detail::quantize_q8k_scalar(const float* x, int64_t cols, std::byte* out) {
  const int64_t nb = cols / kQKK;
  auto* blocks = reinterpret_cast<BlockQ8_K*>(out);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kQKK;
    BlockQ8_K& blk = blocks[b];
    float amax = 0.0f;
    for (int j = 0; j < kQKK; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    blk.d = amax / 127.0f;
    for (int g = 0; g < kQKK / 16; ++g) {
      int32_t sum = 0;
      for (int j = 16 * g; j < 16 * g + 16; ++j) {
        const int32_t q = std::clamp(round_to_int(xb[j] * id), -127, 127);
        blk.qs[j] = static_cast<int8_t>(q);
        sum += q;
      }
      blk.bsums[g] = static_cast<int16_t>(sum);
    }
  }
}

namespace {

const MatmulKernels& default_kernels() {
  return detail::kernels().matmul;
}

TileFn tile_for(const MatmulKernels& ks, DType t) {
  switch (t) {
    case DType::Q4_0:
      return ks.q4_0;
    case DType::Q4_1:
      return ks.q4_1;
    case DType::Q5_0:
      return ks.q5_0;
    case DType::Q5_1:
      return ks.q5_1;
    case DType::Q8_0:
      return ks.q8_0;
    case DType::Q4_K:
      return ks.q4_k;
    case DType::Q6_K:
      return ks.q6_k;
    default:
      return nullptr;
  }
}

bool uses_q8_k(DType t) {
  return t == DType::Q4_K || t == DType::Q6_K;
}

void check_shapes(const WeightMatrix& w, const Activations& x, int64_t ldy) {
  if (w.rows < 0 || w.cols <= 0 || (w.rows > 0 && w.data == nullptr)) {
    throw InvalidArgument(fmt::format("matmul: bad weight matrix ({} rows x {} cols, data {})",
                                      w.rows, w.cols, w.data ? "set" : "null"));
  }
  const auto rb = row_bytes(w.type, static_cast<uint64_t>(w.cols));
  if (!rb || *rb != w.row_bytes) {
    throw InvalidArgument(
        fmt::format("matmul: {} weight rows of {} columns: expected {} bytes per row, found {}",
                    dtype_name(w.type), w.cols,
                    rb ? std::to_string(*rb) : std::string("no valid size"), w.row_bytes));
  }
  if (w.layout != WeightLayout::kRows &&
      (w.layout != WeightLayout::kRows8 || !can_interleave(w.type))) {
    throw InvalidArgument(fmt::format("matmul: {} weights in layout {} (kRows8 is for {})",
                                      dtype_name(w.type), static_cast<int>(w.layout),
                                      "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"));
  }
  if (x.cols() != w.cols) {
    throw InvalidArgument(
        fmt::format("matmul: activations have {} columns, weights expect {}", x.cols(), w.cols));
  }
  if (x.n_rows() > 1 && ldy < w.rows) {
    throw InvalidArgument(
        fmt::format("matmul: output stride {} is smaller than the {} weight rows", ldy, w.rows));
  }
}

// Rows of the f32 fallback: each weight row is dequantized once (into a per-thread
// buffer) and dotted with every activation row.
void matmul_fallback(const MatmulKernels& ks, const WeightMatrix& w, const Activations& x, float* y,
                     int64_t ldy, ThreadPool& pool) {
  const int64_t T = x.n_rows(), cols = w.cols;
  const float* xf = x.f32();
  {
    // Workers must not throw: a type without a dequantizer fails here, on the caller.
    float probe[kQKK];  // the largest block
    dequantize_row(w.type, w.data, probe, dtype_info(w.type).block_size);
  }
  pool.parallel_for(w.rows, 4, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> row;  // [cols]
    if (static_cast<int64_t>(row.size()) < cols) row.resize(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_weight_row(w, r, row.data());
      for (int64_t t = 0; t < T; ++t) y[t * ldy + r] = ks.dot_f32(row.data(), xf + t * cols, cols);
    }
  });
}

void matmul_impl(const MatmulKernels& ks, const WeightMatrix& w, Activations& x, float* y,
                 int64_t ldy, ThreadPool& pool) {
  check_shapes(w, x, ldy);
  const int64_t T = x.n_rows(), rows = w.rows;
  if (T <= 0 || rows == 0) return;
  const TileFn tile = tile_for(ks, w.type);
  if (tile == nullptr) {
    matmul_fallback(ks, w, x, y, ldy, pool);
    return;
  }
  const void* xq = uses_q8_k(w.type) ? x.q8_k(pool) : x.q8_0(pool);
  const int nth = pool.size();
  // Rows are split in multiples of 16 (whole micro-tiles); when there are too few rows
  // to keep every thread busy, tokens are split instead.
  if (nth > 1 && T >= 8 && rows < 32 * nth) {
    pool.parallel_for(T, 4, [&](int64_t t0, int64_t t1) { tile(w, xq, 0, rows, t0, t1, y, ldy); });
  } else {
    pool.parallel_for(rows, 16, [&](int64_t r0, int64_t r1) { tile(w, xq, r0, r1, 0, T, y, ldy); });
  }
}

}  // namespace

void Activations::set(const float* x, int64_t T, int64_t cols) {
  if (T < 0 || cols < 0 || (T > 0 && cols > 0 && x == nullptr)) {
    throw InvalidArgument(fmt::format("Activations::set: bad shape [{}][{}]", T, cols));
  }
  x_ = x;
  T_ = T;
  cols_ = cols;
  have_q8_0_ = have_q8_k_ = false;
}

const void* Activations::q8_0(ThreadPool& pool) {
  if (have_q8_0_) return q8_0_.data();
  if (cols_ % kQK != 0) {
    throw InvalidArgument(
        fmt::format("activations: {} columns is not a multiple of the block size {}", cols_, kQK));
  }
  const int64_t rb = detail::q8a_row_bytes(cols_);
  if (static_cast<int64_t>(q8_0_.size()) < rb * T_) q8_0_.resize(static_cast<size_t>(rb * T_));
  std::byte* out = q8_0_.data();
  const detail::QuantizeFn quantize = default_kernels().quantize_q8a;
  pool.parallel_for(T_, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) quantize(x_ + t * cols_, cols_, out + t * rb);
  });
  have_q8_0_ = true;
  return q8_0_.data();
}

const void* Activations::q8_k(ThreadPool& pool) {
  if (have_q8_k_) return q8_k_.data();
  if (cols_ % kQKK != 0) {
    throw InvalidArgument(fmt::format(
        "activations: {} columns is not a multiple of the K block size {}", cols_, kQKK));
  }
  const int64_t rb = detail::q8k_row_bytes(cols_);
  if (static_cast<int64_t>(q8_k_.size()) < rb * T_) q8_k_.resize(static_cast<size_t>(rb * T_));
  std::byte* out = q8_k_.data();
  const detail::QuantizeFn quantize = default_kernels().quantize_q8k;
  pool.parallel_for(T_, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) quantize(x_ + t * cols_, cols_, out + t * rb);
  });
  have_q8_k_ = true;
  return q8_k_.data();
}

void matmul(const WeightMatrix& w, Activations& x, float* y, int64_t ldy, ThreadPool& pool) {
  matmul_impl(default_kernels(), w, x, y, ldy, pool);
}

void matmul_with(KernelIsa isa, const WeightMatrix& w, Activations& x, float* y, int64_t ldy,
                 ThreadPool& pool) {
  matmul_impl(detail::kernels_for(isa).matmul, w, x, y, ldy, pool);
}

namespace {

constexpr int64_t kRowGrain = 16;  // rows per block of a fused single-token job
constexpr int kMaxFused = 8;       // products per fused job

// Whether outs can share one single-token job: integer kernels only (the f32 fallback
// splits its own work), activations of one token, at most kMaxFused products.
bool fusable(const MatmulOut* outs, int n, const Activations& x) {
  if (x.n_rows() != 1 || n > kMaxFused) return false;
  for (int i = 0; i < n; ++i) {
    if (!has_integer_kernel(outs[i].w->type)) return false;
  }
  return true;
}

// Runs the products as one job over blocks of kRowGrain rows of each matrix.
void fused_job(const MatmulKernels& ks, const MatmulOut* outs, int n, Activations& x,
               ThreadPool& pool) {
  TileFn tiles[kMaxFused];
  const void* xq[kMaxFused];
  int64_t first_block[kMaxFused + 1];
  first_block[0] = 0;
  for (int i = 0; i < n; ++i) {
    const WeightMatrix& w = *outs[i].w;
    check_shapes(w, x, outs[i].ldy);
    tiles[i] = tile_for(ks, w.type);
    xq[i] = uses_q8_k(w.type) ? x.q8_k(pool) : x.q8_0(pool);
    first_block[i + 1] = first_block[i] + (w.rows + kRowGrain - 1) / kRowGrain;
  }
  pool.parallel_for(first_block[n], 1, [&](int64_t b0, int64_t b1) {
    for (int i = 0; i < n && b0 < b1; ++i) {
      const int64_t lo = std::max(b0, first_block[i]), hi = std::min(b1, first_block[i + 1]);
      if (lo >= hi) continue;
      const WeightMatrix& w = *outs[i].w;
      const int64_t r0 = (lo - first_block[i]) * kRowGrain;
      const int64_t r1 = std::min(w.rows, (hi - first_block[i]) * kRowGrain);
      tiles[i](w, xq[i], r0, r1, 0, 1, outs[i].y, outs[i].ldy);
    }
  });
}

}  // namespace

namespace detail {

int single_token_share(const WeightMatrix* const* ws, int n, bool interleaved, size_t bytes,
                       int thread, int nth, ThreadPool::HintRange* out) {
  if (nth < 1 || thread < 0 || thread >= nth || n < 1 || n > kMaxFused || (interleaved && n != 2) ||
      bytes == 0)
    return 0;
  // The job's blocks of kRowGrain rows, numbered as fused_job and matmul_swiglu number
  // them (a single matmul of one token splits its rows in the same blocks).
  int64_t first_block[kMaxFused + 1];
  first_block[0] = 0;
  for (int i = 0; i < n; ++i) {
    if (ws[i] == nullptr || ws[i]->data == nullptr || !has_integer_kernel(ws[i]->type)) return 0;
    first_block[i + 1] = first_block[i] + (ws[i]->rows + kRowGrain - 1) / kRowGrain;
  }
  if (interleaved && ws[0]->rows != ws[1]->rows) return 0;
  const int64_t blocks = interleaved ? first_block[1] : first_block[n];
  const int64_t b0 = blocks * thread / nth, b1 = blocks * (thread + 1) / nth;
  const auto rows_at = [](const WeightMatrix& w, int64_t r0, int64_t r1, size_t cap) {
    const auto* base = static_cast<const std::byte*>(w.data);
    return ThreadPool::HintRange{
        base + static_cast<uint64_t>(r0) * w.row_bytes,
        std::min<size_t>(cap, static_cast<uint64_t>(r1 - r0) * w.row_bytes)};
  };
  if (b0 >= b1) return 0;
  if (interleaved) {
    const int64_t r0 = b0 * kRowGrain, r1 = std::min(ws[0]->rows, b1 * kRowGrain);
    out[0] = rows_at(*ws[0], r0, r1, bytes / 2);
    out[1] = rows_at(*ws[1], r0, r1, bytes / 2);
    return 2;
  }
  int k = 0;
  size_t left = bytes;
  for (int i = 0; i < n && left > 0 && k < ThreadPool::kHintRanges; ++i) {
    const int64_t lo = std::max(b0, first_block[i]), hi = std::min(b1, first_block[i + 1]);
    if (lo >= hi) continue;
    const int64_t r0 = (lo - first_block[i]) * kRowGrain;
    const int64_t r1 = std::min(ws[i]->rows, (hi - first_block[i]) * kRowGrain);
    out[k] = rows_at(*ws[i], r0, r1, left);
    left -= out[k++].bytes;
  }
  return k;
}

}  // namespace detail

void matmul_many(const MatmulOut* outs, int n, Activations& x, ThreadPool& pool) {
  if (n < 0 || (n > 0 && outs == nullptr)) {
    throw InvalidArgument(fmt::format("matmul_many: bad product list ({} products)", n));
  }
  for (int i = 0; i < n; ++i) {
    if (outs[i].w == nullptr || outs[i].y == nullptr) {
      throw InvalidArgument(fmt::format("matmul_many: product {} has no matrix or output", i));
    }
  }
  if (n == 0) return;
  if (!fusable(outs, n, x)) {
    for (int i = 0; i < n; ++i) matmul(*outs[i].w, x, outs[i].y, outs[i].ldy, pool);
    return;
  }
  fused_job(default_kernels(), outs, n, x, pool);
}

void prefetch_single_token(const WeightMatrix* const* ws, int n, bool interleaved, size_t bytes,
                           ThreadPool& pool) {
  for (int t = 1; t < pool.size(); ++t) {
    ThreadPool::HintRange ranges[ThreadPool::kHintRanges];
    const int k = detail::single_token_share(ws, n, interleaved, bytes, t, pool.size(), ranges);
    if (k == 0) return;
    pool.prefetch_hint(t, ranges, k);
  }
}

void matmul_swiglu(const WeightMatrix& w_gate, const WeightMatrix& w_up, Activations& x,
                   float* gate, float* up, int64_t ld, ThreadPool& pool) {
  if (w_gate.rows != w_up.rows) {
    throw InvalidArgument(
        fmt::format("matmul_swiglu: gate has {} rows, up {}", w_gate.rows, w_up.rows));
  }
  const MatmulOut outs[2] = {{&w_gate, gate, ld}, {&w_up, up, ld}};
  if (!fusable(outs, 2, x)) {
    matmul(w_gate, x, gate, ld, pool);
    matmul(w_up, x, up, ld, pool);
    for (int64_t t = 0; t < x.n_rows(); ++t) swiglu(gate + t * ld, up + t * ld, w_gate.rows);
    return;
  }
  // Gate and up blocks interleave (gate rows [r0, r1), then the same rows of up) so that
  // the thread that finishes a block of up also holds that block of gate.
  const int64_t blocks = (w_gate.rows + kRowGrain - 1) / kRowGrain;
  const MatmulKernels& ks = default_kernels();
  check_shapes(w_gate, x, ld);
  check_shapes(w_up, x, ld);
  const TileFn tg = tile_for(ks, w_gate.type), tu = tile_for(ks, w_up.type);
  const void* xg = uses_q8_k(w_gate.type) ? x.q8_k(pool) : x.q8_0(pool);
  const void* xu = uses_q8_k(w_up.type) ? x.q8_k(pool) : x.q8_0(pool);
  pool.parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = b0 * kRowGrain, r1 = std::min(w_gate.rows, b1 * kRowGrain);
    tg(w_gate, xg, r0, r1, 0, 1, gate, ld);
    tu(w_up, xu, r0, r1, 0, 1, up, ld);
    swiglu(gate + r0, up + r0, r1 - r0);
  });
}

namespace {

// Rows [0, full) of a kRows matrix (full a multiple of 8) into kRows8 at out, for blocks of
// kBlock bytes (a constant, so that each block is one inlined copy). kPacked: the blocks'
// kFields bytes of f16 fields, kQh bytes of high bits and 16 nibble bytes are packed
// (detail::packs_nibbles); else each block is copied whole.
template <size_t kBlock, bool kPacked, size_t kFields = 0, size_t kQh = 0>
void interleave_groups(const std::byte* src, std::byte* out, int64_t full, uint64_t row_bytes) {
  const uint64_t nb = row_bytes / kBlock;
  for (int64_t g = 0; g < full; g += 8) {
    const std::byte* in = src + static_cast<uint64_t>(g) * row_bytes;
    std::byte* o = out + static_cast<uint64_t>(g) * row_bytes;
    for (uint64_t b = 0; b < nb; ++b, o += 8 * kBlock) {
      for (uint64_t i = 0; i < 8; ++i) {
        const std::byte* blk = in + i * row_bytes + b * kBlock;
        if constexpr (!kPacked) {
          std::memcpy(o + i * kBlock, blk, kBlock);
        } else {
          static_assert(kFields + kQh + 16 == kBlock);
          for (size_t f = 0; f < kFields / 2; ++f) std::memcpy(o + 16 * f + 2 * i, blk + 2 * f, 2);
          if constexpr (kQh != 0) std::memcpy(o + 8 * kFields + 4 * i, blk + kFields, 4);
          for (size_t k = 0; k < 4; ++k) {
            std::memcpy(o + 8 * (kFields + kQh) + 32 * k + 4 * i, blk + kFields + kQh + 4 * k, 4);
          }
        }
      }
    }
  }
}

}  // namespace

bool can_interleave(DType t) {
  return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 ||
         t == DType::Q8_0;
}

WeightMatrix interleave_rows8(const WeightMatrix& w, void* dst) {
  const auto rb = row_bytes(w.type, static_cast<uint64_t>(std::max<int64_t>(w.cols, 0)));
  if (!can_interleave(w.type) || w.layout != WeightLayout::kRows || w.rows < 0 || w.cols <= 0 ||
      !rb || *rb != w.row_bytes || (w.rows > 0 && (w.data == nullptr || dst == nullptr))) {
    throw InvalidArgument(fmt::format(
        "interleave_rows8: not a row-major {} matrix of {} x {} with {}-byte rows (interleaving "
        "is for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)",
        dtype_name(w.type), w.rows, w.cols, w.row_bytes));
  }
  const auto* src = static_cast<const std::byte*>(w.data);
  auto* out = static_cast<std::byte*>(dst);
  const int64_t full = w.rows / 8 * 8;
  switch (w.type) {
    case DType::Q4_0:
      interleave_groups<sizeof(BlockQ4_0), true, 2>(src, out, full, w.row_bytes);
      break;
    case DType::Q4_1:
      interleave_groups<sizeof(BlockQ4_1), true, 4>(src, out, full, w.row_bytes);
      break;
    case DType::Q5_0:
      interleave_groups<sizeof(BlockQ5_0), true, 2, 4>(src, out, full, w.row_bytes);
      break;
    case DType::Q5_1:
      interleave_groups<sizeof(BlockQ5_1), true, 4, 4>(src, out, full, w.row_bytes);
      break;
    default:
      interleave_groups<sizeof(BlockQ8_0), false>(src, out, full, w.row_bytes);
      break;
  }
  std::memcpy(out + static_cast<uint64_t>(full) * w.row_bytes,
              src + static_cast<uint64_t>(full) * w.row_bytes,
              static_cast<size_t>(static_cast<uint64_t>(w.rows - full) * w.row_bytes));
  WeightMatrix r = w;
  r.data = dst;
  r.layout = WeightLayout::kRows8;
  return r;
}

void dequantize_weight_row(const WeightMatrix& w, int64_t r, float* y) {
  if (w.layout != WeightLayout::kRows8) {
    dequantize_row(w.type, static_cast<const std::byte*>(w.data) + r * w.row_bytes, y, w.cols);
    return;
  }
  const int64_t bs = dtype_info(w.type).block_size;
  uint8_t tmp[detail::kMaxLegacyBlock];
  for (int64_t b = 0; b < w.cols / bs; ++b) {
    dequantize_row(w.type, detail::legacy_block(w, r, b, tmp), y + b * bs, bs);
  }
}

void matvec(const WeightMatrix& w, const float* x, float* y, ThreadPool& pool) {
  Activations a;
  a.set(x, 1, w.cols);
  matmul(w, a, y, w.rows, pool);
}

const char* isa_name(KernelIsa isa) {
  return detail::family(isa).name;
}

const char* kernel_isa() {
  return isa_name(detail::kernels().isa);
}

std::vector<KernelIsa> available_isas() {
  std::vector<KernelIsa> v;
  for (const auto* f = detail::families_begin(); f != detail::families_end(); ++f)
    if (f->runs(detail::cpu_features())) v.push_back(f->isa);
  return v;
}

bool has_integer_kernel(DType t) {
  return tile_for(detail::scalar_matmul_kernels(), t) != nullptr;
}

}  // namespace spillway::ops
