// CPU detection, the choice of a family and the kernel tables of the families.
#include "kernels.h"

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "spillway/core/error.h"
#include "spillway/core/log_spdlog.h"

namespace spillway::ops::detail {

namespace {

#if defined(__x86_64__) || defined(__i386__)
// XCR0: the register states the OS saves and restores (valid only when OSXSAVE is set).
uint64_t read_xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1,
             f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = read_xcr0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;    // SSE and AVX state
  const bool zmm_state = (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM0-15 upper halves, ZMM16-31
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = (b >> 5) & 1;
  const bool avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1,
             avx512vl = (b >> 31) & 1, avx512vnni = (c >> 11) & 1;
  f.avx2 = ymm_state && avx2 && fma && f16c;
  f.avx512_vnni = f.avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl && avx512vnni;
  return f;
}
#else
CpuFeatures detect() {
  return {};
}
#endif

Kernels make_scalar() {
  Kernels k;
  k.isa = KernelIsa::kScalar;
  k.matmul = scalar_matmul_kernels();
  k.attend_piece = attend_piece_scalar;
  k.attend_dim_multiple = 1;
  k.rmsnorm = rmsnorm_scalar;
  k.swiglu = swiglu_scalar;
  k.geglu = geglu_scalar;
  k.softmax = softmax_scalar;
  return k;
}

Kernels make_avx2() {
  Kernels k;
  k.isa = KernelIsa::kAvx2;
  k.matmul = avx2_matmul_kernels();
  k.attend_piece = attend_piece_avx2;
  k.attend_dim_multiple = 16;
  k.rmsnorm = rmsnorm_avx2;
  k.swiglu = swiglu_avx2;
  k.geglu = geglu_avx2;
  k.softmax = softmax_avx2;
  return k;
}

// The AVX-512 VNNI family: its own kernel in every entry where it beat AVX2 on the machine
// it was measured on (Zen 4 class; docs/performance.md, "AVX-512 kernels"), AVX2's in the
// others (the f32 dot product of the dequantizing fallback, which has no AVX-512 version).
Kernels make_avx512() {
  Kernels k = make_avx2();
  k.isa = KernelIsa::kAvx512Vnni;
  const MatmulKernels& m = avx512_matmul_kernels();
  // Speed-up over AVX2 at the models' shapes, 1 thread, T = 1 / T = 64 (bench_kernels):
  // Q4_0 +5 % / +16 %, Q4_1 +2 % / +20 %, Q5_0 +5-6 % / +27-30 %, Q5_1 +5 % / +32 %,
  // Q8_0 +7-16 % / +10-12 %, Q4_K +5-7 % / +2 %, Q6_K +5 % / +10 %.
  k.matmul.q4_0 = m.q4_0;
  k.matmul.q4_1 = m.q4_1;
  k.matmul.q5_0 = m.q5_0;
  k.matmul.q5_1 = m.q5_1;
  k.matmul.q8_0 = m.q8_0;
  k.matmul.q4_k = m.q4_k;
  k.matmul.q6_k = m.q6_k;
  // Attention of one layer (SmolLM2 and Gemma 3 shapes, f32 and f16 caches, 128-4096 keys)
  // +9-21 %; rmsnorm +61 %, softmax +44 %, swiglu +45 %, geglu +39 %.
  k.attend_piece = attend_piece_avx512;
  k.attend_dim_multiple = 32;
  k.rmsnorm = rmsnorm_avx512;
  k.swiglu = swiglu_avx512;
  k.geglu = geglu_avx512;
  k.softmax = softmax_avx512;
  return k;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool can_run(const CpuFeatures& cpu, KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx512Vnni:
      return cpu.avx512_vnni;
    case KernelIsa::kAvx2:
      return cpu.avx2;
    case KernelIsa::kScalar:
      break;
  }
  return true;
}

KernelIsa select_isa(const CpuFeatures& cpu, const char* env) {
  const KernelIsa best = cpu.avx512_vnni ? KernelIsa::kAvx512Vnni
                         : cpu.avx2      ? KernelIsa::kAvx2
                                         : KernelIsa::kScalar;
  if (env == nullptr) return best;
  const std::string_view v(env);
  KernelIsa want = best;
  if (v == "scalar") {
    want = KernelIsa::kScalar;
  } else if (v == "avx2") {
    want = KernelIsa::kAvx2;
  } else if (v == "avx512" || v == "avx512-vnni") {
    want = KernelIsa::kAvx512Vnni;
  }
  return can_run(cpu, want) ? want : best;
}

const Kernels& kernels_for(KernelIsa isa) {
  if (!can_run(cpu_features(), isa)) {
    throw UnsupportedError(isa == KernelIsa::kAvx2
                               ? "kernels: this CPU (or OS) has no AVX2/FMA/F16C"
                               : "kernels: this CPU (or OS) has no AVX-512 F/BW/VL/DQ with VNNI");
  }
  switch (isa) {
    case KernelIsa::kAvx512Vnni: {
      static const Kernels k = make_avx512();
      return k;
    }
    case KernelIsa::kAvx2: {
      static const Kernels k = make_avx2();
      return k;
    }
    case KernelIsa::kScalar:
      break;
  }
  static const Kernels k = make_scalar();
  return k;
}

const Kernels& kernels() {
  static const Kernels& k = []() -> const Kernels& {
    const char* env = std::getenv("SPILLWAY_ISA");
    const CpuFeatures& cpu = cpu_features();
    const KernelIsa isa = select_isa(cpu, env);
    auto lg = logger();
    if (env != nullptr) {
      const std::string_view v(env);
      const std::optional<KernelIsa> want = v == "scalar" ? std::optional(KernelIsa::kScalar)
                                            : v == "avx2" ? std::optional(KernelIsa::kAvx2)
                                            : v == "avx512" || v == "avx512-vnni"
                                                ? std::optional(KernelIsa::kAvx512Vnni)
                                                : std::nullopt;
      if (!want)
        lg->warn("SPILLWAY_ISA='{}' names no kernel family (scalar, avx2, avx512-vnni); using {}",
                 env, isa_name(isa));
      else if (!can_run(cpu, *want))
        lg->warn("SPILLWAY_ISA='{}': this CPU cannot run those kernels; using {}", env,
                 isa_name(isa));
    }
    lg->info("kernels: {} (best this CPU runs: {}{})", isa_name(isa),
             isa_name(select_isa(cpu, nullptr)),
             env ? fmt::format(", SPILLWAY_ISA={}", env) : std::string());
    return kernels_for(isa);
  }();
  return k;
}

}  // namespace spillway::ops::detail
