// Ends what target_avx2_begin.h or target_avx512_begin.h began: the family's target and
// its diagnostic settings. No include guard on purpose.
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
