// Private to ops/: one table of kernels per instruction-set family (scalar, avx2,
// avx512-vnni), chosen once at start-up from what the CPU and the OS support and the
// SPILLWAY_ISA override. matmul.cpp, attention.cpp and ops.cpp read only this table.
//
// The families are one list (families() in kernels.cpp: name, aliases, what the CPU must
// have, how the table is made). The SIMD kernels are written once per operation, as
// templates on a small trait of the instructions that differ between families
// (matmul_groups.h: the integer dot products; simd.h: vectors of f32 for attention and the
// row ops), and each family's file instantiates them under its target pragma. Adding a
// family: its KernelIsa value and CpuFeatures bit (with the detection), one row of
// families(), its trait, and one file that instantiates the kernels with it.
#pragma once

#include <cmath>
#include <cstdint>

#include "matmul_internal.h"
#include "spillway/ops/attention.h"
#include "spillway/ops/matmul.h"

namespace spillway::ops::detail {

// The families this CPU and OS can run.
struct CpuFeatures {
  // AVX2 + FMA + F16C, with the OS saving YMM state (XCR0 bits 1, 2).
  bool avx2 = false;
  // AVX-512 F/BW/VL/DQ + AVX512_VNNI on top of avx2, with the OS saving opmask and ZMM
  // state (XCR0 bits 5, 6, 7).
  bool avx512_vnni = false;
};

// CPUID and XGETBV, read once.
const CpuFeatures& cpu_features();

struct Kernels;

// One kernel family.
struct Family {
  KernelIsa isa;
  const char* name;   // as kernel_isa() reports it and SPILLWAY_ISA names it
  const char* alias;  // another name SPILLWAY_ISA accepts (nullptr: none)
  const char* needs;  // what the CPU and the OS must support, for messages
  bool (*runs)(const CpuFeatures& cpu);
  Kernels (*make)();  // the family's table
};

// Every family, the scalar reference first, then narrowest to widest.
const Family* families_begin();
const Family* families_end();
const Family& family(KernelIsa isa);
// The family SPILLWAY_ISA's value names (by name or alias), or nullptr.
const Family* family_named(const char* name);

// Whether a CPU with `cpu` runs family `isa`.
bool can_run(const CpuFeatures& cpu, KernelIsa isa);

// The family to use: the widest `cpu` runs, unless `env` (the SPILLWAY_ISA value, null
// when unset) names one it can run ("scalar", "avx2", "avx512-vnni" or an alias such as
// "avx512"). Names of families the CPU cannot run, and unknown names, are ignored.
KernelIsa select_isa(const CpuFeatures& cpu, const char* env);

// Bytes of n consecutive elements of a KV cache of type t (F32, F16, or Q8_0 with n a
// multiple of 32: n / 32 blocks of 34 bytes).
constexpr uint64_t kv_bytes(DType t, int64_t n) {
  const auto u = static_cast<uint64_t>(n);
  return t == DType::F32 ? 4 * u : t == DType::F16 ? 2 * u : u / 32 * 34;
}

// How many blocks of 4 keys ahead the attention kernels prefetch keys (into L2, with this
// block's values): decode at depth 4096 ran 5-13 % faster with 8 than with 2
// (docs/performance-history.md, 67e99c7).
inline constexpr uint64_t kKeyPrefetch = 8;

// The attention kernels' prefetch for the block of 4 keys whose rows (`row` bytes each)
// start at k and v: a decoding cache streams from memory once per token, so the keys
// kKeyPrefetch blocks ahead and this block's values (summed after the piece's scores) are
// fetched into L2 (locality 2: prefetcht1). Addresses as integers: the keys ahead may lie
// past the cache (a prefetch does not fault; a pointer past the object would be undefined).
inline void prefetch_key_block(const uint8_t* k, const uint8_t* v, uint64_t row) {
  const uintptr_t kn = reinterpret_cast<uintptr_t>(k) + 4 * kKeyPrefetch * row;
  const uintptr_t vn = reinterpret_cast<uintptr_t>(v);
  for (uint64_t b = 0; b < 4 * row; b += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(kn + b), 0, 2);
    __builtin_prefetch(reinterpret_cast<const void*>(vn + b), 0, 2);
  }
}

// Attention piece: the contract of ops::attend_piece for runs already clipped to the piece
// (`total` keys, at most kAttnPiece).
using AttendPieceFn = void (*)(const AttentionShape& s, int64_t kv_head, const KeyRun* sub,
                               int n_sub, int64_t total, const void* k, const void* v, float* part);
// Row ops, with the contracts of ops.h.
using RmsnormFn = void (*)(const float* x, const float* w, float* y, int64_t n, float eps);
using GatedFn = void (*)(float* gate, const float* up, int64_t n);
using SoftmaxFn = void (*)(float* x, int64_t n);

struct Kernels {
  KernelIsa isa = KernelIsa::kScalar;
  MatmulKernels matmul;
  // attend_piece handles head_dim % attend_dim_multiple == 0; other head sizes take the
  // scalar piece.
  AttendPieceFn attend_piece = nullptr;
  int64_t attend_dim_multiple = 1;
  RmsnormFn rmsnorm = nullptr;
  GatedFn swiglu = nullptr;
  GatedFn geglu = nullptr;
  SoftmaxFn softmax = nullptr;
};

// The table chosen at start-up: select_isa(cpu_features(), getenv("SPILLWAY_ISA")).
const Kernels& kernels();
// The table of one family; UnsupportedError if the CPU cannot run it.
const Kernels& kernels_for(KernelIsa isa);

// ops::attend_piece (which runs kernels()) with the table `ks`: for tests and benchmarks
// that compare families.
void attend_piece_with(const Kernels& ks, const AttentionShape& s, int64_t kv_head,
                       const KeyRun* runs, int n_runs, int64_t n0, int64_t n1, const void* k,
                       const void* v, float* part);

// ---- the kernels of each family (declared here, placed in the tables by kernels.cpp) ----

// Scalar (ops.cpp, attention.cpp): the plain definitions.
void rmsnorm_scalar(const float* x, const float* w, float* y, int64_t n, float eps);
void swiglu_scalar(float* gate, const float* up, int64_t n);
void geglu_scalar(float* gate, const float* up, int64_t n);
void softmax_scalar(float* x, int64_t n);
void attend_piece_scalar(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                         int64_t total, const void* k, const void* v, float* part);

// GELU, tanh form: 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
inline float gelu_tanh(float x) {
  const float u2 = 1.5957691216057308f * (x + 0.044715f * x * x * x);  // 2u
  return x / (1.0f + std::exp(-u2));
}

// AVX2 (ops_avx2.cpp, attention_avx2.cpp; only when cpu_features().avx2). exp is a
// range-reduced polynomial: relative error below 1e-6 against std::exp for inputs in
// [-87, 88]; below -87.3 it returns 0, above 88.7 +inf. attend_piece_avx2 needs
// head_dim % 16 == 0.
void swiglu_avx2(float* gate, const float* up, int64_t n);
void geglu_avx2(float* gate, const float* up, int64_t n);
void softmax_avx2(float* x, int64_t n);
void rmsnorm_avx2(const float* x, const float* w, float* y, int64_t n, float eps);
void attend_piece_avx2(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                       int64_t total, const void* k, const void* v, float* part);

// AVX-512 (ops_avx512.cpp, attention_avx512.cpp; only when cpu_features().avx512_vnni):
// the same exp polynomial 16 lanes wide. attend_piece_avx512 needs head_dim % 32 == 0.
void swiglu_avx512(float* gate, const float* up, int64_t n);
void geglu_avx512(float* gate, const float* up, int64_t n);
void softmax_avx512(float* x, int64_t n);
void rmsnorm_avx512(const float* x, const float* w, float* y, int64_t n, float eps);
void attend_piece_avx512(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                         int64_t total, const void* k, const void* v, float* part);

}  // namespace spillway::ops::detail
