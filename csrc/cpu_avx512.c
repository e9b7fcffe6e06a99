/* The kernels for x86-64 with AVX-512 (F and VL) and FMA: 512-bit vectors, 32 registers. */
#include "unshared_cpu.h"

#ifdef LC_X86
#include <immintrin.h>
/* non-temporal stores of whole aligned vectors (the weight gradient) */
#define LC_NT_F32(p, v) _mm512_stream_ps((p), (__m512)(v))
#define LC_NT_F64(p, v) _mm512_stream_pd((p), (__m512d)(v))
#define LC_NT_F32_HALF(p, v) _mm256_stream_ps((p), (__m256)(v))
#define LC_NT_F64_HALF(p, v) _mm256_stream_pd((p), (__m256d)(v))
#define LC_FENCE() _mm_sfence()
/* the first len lanes (len < lanes), zeros past them; masked-off lanes touch no memory */
#define LC_LOAD_PART_F32(p, len) _mm512_maskz_loadu_ps((__mmask16)((1u << (len)) - 1), (p))
#define LC_LOAD_PART_F64(p, len) _mm512_maskz_loadu_pd((__mmask8)((1u << (len)) - 1), (p))
#define LC_LOAD_PART_F32_HALF(p, len) _mm256_maskz_loadu_ps((__mmask8)((1u << (len)) - 1), (p))
#define LC_LOAD_PART_F64_HALF(p, len) _mm256_maskz_loadu_pd((__mmask8)((1u << (len)) - 1), (p))
#define LC_STORE_PART_F32(p, v, len) _mm512_mask_storeu_ps((p), (__mmask16)((1u << (len)) - 1), (__m512)(v))
#define LC_STORE_PART_F64(p, v, len) _mm512_mask_storeu_pd((p), (__mmask8)((1u << (len)) - 1), (__m512d)(v))
#define LC_STORE_PART_F32_HALF(p, v, len) _mm256_mask_storeu_ps((p), (__mmask8)((1u << (len)) - 1), (__m256)(v))
#define LC_STORE_PART_F64_HALF(p, v, len) _mm256_mask_storeu_pd((p), (__mmask8)((1u << (len)) - 1), (__m256d)(v))
#define LC_ISA avx512
#define LC_TARGET "avx512f,avx512vl,avx2,fma"
#define LC_VB 64
#define FWD_NB 6   /* 24 accumulators: 10 loads per 24 FMAs */
#define FWD_NB_SMALL 4  /* for batches such as 8 */
#define FWD_OB 4
#define WG_OB 4    /* 24 accumulators: 10 loads per 24 FMAs */
#define WG_RV 6
#define IG_CB1 16  /* 16 accumulators at 1, 2 or 4 batch vectors */
#define IG_CB2 8
#define IG_CB4 4
#define ROWS_NB1 8  /* rows path, forward: samples x 1 output channel */
#define ROWS_OB 4   /* output channels of a block */
#define ROWS_NB4 4  /* samples x ROWS_OB output channels */
#define ROWS_RB1 12  /* weight grad: patch elements x 1 output channel */
#define ROWS_RB4 4  /* patch elements x ROWS_OB output channels */
#include "isa.h"
#endif
