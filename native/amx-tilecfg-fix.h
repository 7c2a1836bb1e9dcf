/* Force-included into every llama.cpp source file that `make` builds (see Makefile, docs/amx.md).
 *
 * GCC 12's amxtileintrin.h writes `_tile_loadconfig` as inline assembly whose memory operand is
 * `*(const void **)config`: it tells the optimizer that `ldtilecfg` reads 8 bytes of the 64-byte
 * tile configuration. The stores of the tile shapes (bytes 16-63) are then removed as dead, the
 * instruction loads zeros and stack garbage, and the CPU raises a general-protection fault:
 * llama.cpp's AMX kernels die with SIGSEGV on their first matrix product. Later GCC releases use
 * the builtin `__builtin_ia32_ldtilecfg`. These macros name all 64 bytes, which is correct for any
 * compiler; call sites such as `_tile_loadconfig(&tc)` expand to them. */
#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__GNUC__)
#include <immintrin.h>
#define _tile_loadconfig(config) \
    __asm__ volatile("ldtilecfg\t%X0" ::"m"(*(const unsigned char(*)[64])(config)))
#define _tile_storeconfig(config) \
    __asm__ volatile("sttilecfg\t%X0" : "=m"(*(unsigned char(*)[64])(config)))
#endif
