// Compiles what follows, up to target_end.h, for the AVX-512 VNNI family (AVX-512
// F/BW/VL/DQ with VNNI, on top of AVX2, FMA, F16C), whatever the build flags: each family's
// kernel files are compiled for their own instruction set and called only after a CPU
// check (kernels.cpp). Included once per file, before the family's simd header; no include
// guard on purpose.
#if defined(__clang__)
#pragma clang attribute push(                                                               \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// GCC 12's AVX-512 intrinsics start from _mm*_undefined_*() (a self-initialised variable),
// which -Wmaybe-uninitialized and -Wuninitialized report once they are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
