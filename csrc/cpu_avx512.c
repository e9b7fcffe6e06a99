/* The kernels for x86-64 with AVX-512 (F and VL) and FMA: 512-bit vectors, 32 registers. */
#include "unshared_cpu.h"

#ifdef LC_X86
#define LC_ISA avx512
#define LC_TARGET "avx512f,avx512vl,avx2,fma"
#define LC_VB 64
#define FWD_NB 4   /* 16 accumulators: 8 loads per 16 FMAs */
#define FWD_OB 4
#define WG_OB 4    /* 24 accumulators: 10 loads per 24 FMAs */
#define WG_RV 6
#define IG_CB1 16  /* 16 accumulators at 1, 2 or 4 batch vectors */
#define IG_CB2 8
#define IG_CB4 4
#include "isa.h"
#endif
