/* The kernels for x86-64 with AVX2 and FMA: 256-bit vectors, 16 registers. */
#include "unshared_cpu.h"

#ifdef LC_X86
#include <immintrin.h>
/* non-temporal stores of whole aligned vectors (the weight gradient) */
#define LC_NT_F32(p, v) _mm256_stream_ps((p), (__m256)(v))
#define LC_NT_F64(p, v) _mm256_stream_pd((p), (__m256d)(v))
#define LC_NT_F32_HALF(p, v) _mm_stream_ps((p), (__m128)(v))
#define LC_NT_F64_HALF(p, v) _mm_stream_pd((p), (__m128d)(v))
#define LC_FENCE() _mm_sfence()
#define LC_ISA avx2
#define LC_TARGET "avx2,fma"
#define LC_VB 32
#define FWD_NB 6   /* 12 accumulators */
#define FWD_NB_SMALL 4  /* for batches such as 8 */
#define FWD_OB 2
#define WG_OB 4    /* 8 accumulators */
#define WG_RV 2
#define IG_CB1 8   /* 8 accumulators at 1, 2 or 4 batch vectors */
#define IG_CB2 4
#define IG_CB4 2
#define ROWS_NB1 6  /* rows path, forward: samples x 1 output channel */
#define ROWS_OB 4   /* output channels of a block */
#define ROWS_NB4 2  /* samples x ROWS_OB output channels */
#define ROWS_RB1 6  /* weight grad: patch elements x 1 output channel */
#define ROWS_RB4 2  /* patch elements x ROWS_OB output channels */
#include "isa.h"
#endif
