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
// it was measured on (Zen 4 class; docs/performance-history.md, 15286e6), AVX2's in the
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

// The families, narrowest first: the scalar reference runs everywhere.
const Family kFamilies[] = {
    {KernelIsa::kScalar, "scalar", nullptr, "nothing", [](const CpuFeatures&) { return true; },
     make_scalar},
    {KernelIsa::kAvx2, "avx2", nullptr, "AVX2, FMA and F16C with YMM state saved by the OS",
     [](const CpuFeatures& c) { return c.avx2; }, make_avx2},
    {KernelIsa::kAvx512Vnni, "avx512-vnni", "avx512",
     "AVX-512 F/BW/VL/DQ with VNNI and ZMM state saved by the OS",
     [](const CpuFeatures& c) { return c.avx512_vnni; }, make_avx512},
};
constexpr size_t kNumFamilies = sizeof(kFamilies) / sizeof(kFamilies[0]);

}  // namespace

const Family* families_begin() {
  return kFamilies;
}
const Family* families_end() {
  return kFamilies + kNumFamilies;
}

const Family& family(KernelIsa isa) {
  for (const Family& f : kFamilies)
    if (f.isa == isa) return f;
  return kFamilies[0];
}

const Family* family_named(const char* name) {
  if (name == nullptr) return nullptr;
  const std::string_view v(name);
  for (const Family& f : kFamilies)
    if (v == f.name || (f.alias != nullptr && v == f.alias)) return &f;
  return nullptr;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool can_run(const CpuFeatures& cpu, KernelIsa isa) {
  return family(isa).runs(cpu);
}

KernelIsa select_isa(const CpuFeatures& cpu, const char* env) {
  KernelIsa best = KernelIsa::kScalar;
  for (const Family& f : kFamilies)
    if (f.runs(cpu)) best = f.isa;
  const Family* want = family_named(env);
  return want != nullptr && want->runs(cpu) ? want->isa : best;
}

const Kernels& kernels_for(KernelIsa isa) {
  const Family& f = family(isa);
  if (!f.runs(cpu_features()))
    throw UnsupportedError(fmt::format(
        "kernels: this CPU (or OS) cannot run the {} kernels (they need {})", f.name, f.needs));
  // Every family this CPU runs, made once.
  static const struct Tables {
    Kernels k[kNumFamilies];
    Tables() {
      for (size_t i = 0; i < kNumFamilies; ++i)
        if (kFamilies[i].runs(cpu_features())) k[i] = kFamilies[i].make();
    }
  } tables;
  return tables.k[static_cast<size_t>(&f - kFamilies)];
}

const Kernels& kernels() {
  static const Kernels& k = []() -> const Kernels& {
    const char* env = std::getenv("SPILLWAY_ISA");
    const CpuFeatures& cpu = cpu_features();
    const KernelIsa isa = select_isa(cpu, env);
    auto lg = logger();
    if (env != nullptr) {
      const Family* want = family_named(env);
      if (want == nullptr) {
        std::string names;
        for (const Family& f : kFamilies) names += std::string(names.empty() ? "" : ", ") + f.name;
        lg->warn("SPILLWAY_ISA='{}' names no kernel family ({}); using {}", env, names,
                 isa_name(isa));
      } else if (!want->runs(cpu)) {
        lg->warn("SPILLWAY_ISA='{}': this CPU cannot run those kernels (they need {}); using {}",
                 env, want->needs, isa_name(isa));
      }
    }
    lg->info("kernels: {} (best this CPU runs: {}{})", isa_name(isa),
             isa_name(select_isa(cpu, nullptr)),
             env ? fmt::format(", SPILLWAY_ISA={}", env) : std::string());
    return kernels_for(isa);
  }();
  return k;
}

}  // namespace spillway::ops::detail
