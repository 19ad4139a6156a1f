// Compiles what follows, up to target_end.h, for the AVX2 family (AVX2, FMA, F16C),
// whatever the build flags: each family's kernel files are compiled for their own
// instruction set and called only after a CPU check (kernels.cpp). Included once per file,
// before the family's simd header; no include guard on purpose.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC diagnostic push
#endif
