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
/* the first len lanes (len < lanes), zeros past them; masked-off lanes touch no memory (AVX
 * maskload/maskstore: a lane is kept where its mask's sign bit is set) */
#define LC_MASK8(len) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(len)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define LC_MASK4(len) _mm256_cmpgt_epi64(_mm256_set1_epi64x(len), _mm256_setr_epi64x(0, 1, 2, 3))
#define LC_MASK4H(len) _mm_cmpgt_epi32(_mm_set1_epi32((int)(len)), _mm_setr_epi32(0, 1, 2, 3))
#define LC_MASK2H(len) _mm_cmpgt_epi64(_mm_set1_epi64x(len), _mm_set_epi64x(1, 0))
#define LC_LOAD_PART_F32(p, len) _mm256_maskload_ps((p), LC_MASK8(len))
#define LC_LOAD_PART_F64(p, len) _mm256_maskload_pd((p), LC_MASK4(len))
#define LC_LOAD_PART_F32_HALF(p, len) _mm_maskload_ps((p), LC_MASK4H(len))
#define LC_LOAD_PART_F64_HALF(p, len) _mm_maskload_pd((p), LC_MASK2H(len))
#define LC_STORE_PART_F32(p, v, len) _mm256_maskstore_ps((p), LC_MASK8(len), (__m256)(v))
#define LC_STORE_PART_F64(p, v, len) _mm256_maskstore_pd((p), LC_MASK4(len), (__m256d)(v))
#define LC_STORE_PART_F32_HALF(p, v, len) _mm_maskstore_ps((p), LC_MASK4H(len), (__m128)(v))
#define LC_STORE_PART_F64_HALF(p, v, len) _mm_maskstore_pd((p), LC_MASK2H(len), (__m128d)(v))
#define LC_ISA avx2
#define LC_TARGET "avx2,fma"
#define LC_VB 32
#define FWD_NB 4   /* 12 accumulators, 7 loads per 12 FMAs; 4 samples' patch rows fit L1 at DeepFace L4 */
#define FWD_NB_SMALL 4
#define FWD_OB 3
#define WG_OB 4    /* 8 accumulators */
#define WG_RV 2
#define IG_CB1 8   /* 8 accumulators at 1 batch vector, 12 at 2 or 4 */
#define IG_CB2 6
#define IG_CB4 3
#define ROWS_NB1 6  /* rows path, forward: samples x 1 output channel */
#define ROWS_OB 4   /* output channels of a block */
#define ROWS_NB4 2  /* samples x ROWS_OB output channels */
#define ROWS_RB1 6  /* weight grad: patch elements x 1 output channel */
#define ROWS_RB4 2  /* patch elements x ROWS_OB output channels */
#include "isa.h"
#endif
