/* The compiled CPU kernels of unshared.SparselyConnected (plain C, called through ctypes).
 *
 * A layer of nnz connections (input i, output j), each with an (O, C) filter:
 *     y[n, o, j] = sum over connections e = (i, j) of sum_c w[e, o, c] * x[n, c, i]
 * (w: the layer's own (nnz, O, C) layout, one connection's filter contiguous).
 * Python builds two lists of the connections:
 * - runs by output, a CSR (row: out + 1 pointers; a run: input start, edge start, length, output:
 *   consecutive inputs joined to one output by consecutive edges, a gene's SNPs): forward and
 *   weight grad, threads over tiles of outputs;
 * - slots by input, a CSR (col: in + 1 pointers; a slot: edge, output): input grad, threads over
 *   blocks of inputs, in parts whose sums (inputs x channels x batch) stay in L1-L2, summed with
 *   vectors along the batch from a transposed copy of gy, then written to gx's rows once.
 * No gathered copy of the input, no scatter between threads.
 *
 * Like dispatch.c, nothing is trusted: sp_check verifies every size, every run and slot against
 * the extents, and the memory of x, y and w, before any kernel runs. Threads: lc_run of
 * threads.h (PyTorch's OpenMP team when loaded, else pthreads), the pool chosen by
 * unshared_thread_pool. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "unshared_cpu.h"

#ifdef _WIN32
#define SP_EXPORT __declspec(dllexport)
#else
#include <dlfcn.h>
#include <pthread.h>
#define SP_EXPORT __attribute__((visibility("default")))
#endif

/* threads.h's lc_run, with its copy of unshared_thread_pool renamed (dispatch.c exports the one
 * that users call; this file's pool preference follows it at every call: sp_sync_pool). */
#define LC_EXPORT static __attribute__((unused))
#define unshared_thread_pool sp_thread_pool_copy
#include "threads.h"
#undef unshared_thread_pool
#undef LC_EXPORT
int unshared_thread_pool(int choice);

static void sp_sync_pool(void)
{
#ifndef _WIN32
    atomic_store(&lc_prefer_openmp, unshared_thread_pool(-1));
#endif
}

#define SP_ABI_VERSION 4
/* outputs per tile of the forward and the weight gradient */
#define SP_TILE 256
/* samples per tile (forward, weight grad): SP_NT for one output channel, SP_NT_OB for SP_OB of them */
#define SP_NT 8
#define SP_NT_OB 4
#define SP_OB 4
/* the input grad's parts: sums of at most SP_IG_ELEMENTS (inputs x in channels x samples, 64 KiB of
 * floats) per thread, over tiles of SP_IG_NB samples (each sample's row of gx written in long runs) */
#define SP_IG_ELEMENTS 16384
#define SP_IG_NB 32

SP_EXPORT int unshared_sparse_abi_version(void) { return SP_ABI_VERSION; }

/* One call (mirrored by a ctypes.Structure in unshared/sparse/kernels.py). */
typedef struct {
    int64_t n, c, o;                  /* batch, in channels, out channels */
    int64_t in, out, nnz;             /* in_features, out_features, connections */
    void *x; int64_t xs[3];           /* input or its gradient (n, c, in), strides (xs[2] == 1) */
    void *y; int64_t ys[3];           /* output or its gradient (n, o, out), strides */
    void *w;                          /* weight or its gradient, (nnz, o, c) contiguous */
    int64_t x_extent, y_extent, w_extent;  /* elements of each memory from its pointer on */
    const int64_t *row;               /* (out + 1,) runs of each output */
    const int64_t *runs;              /* (nruns, 4): input start, edge start, length, output */
    int64_t nruns;
    const int64_t *col;               /* (in + 1,) slots of each input */
    const int64_t *slots;             /* (nnz, 2): edge, output; by input */
    int64_t blocks, block_size;       /* the input grad's items: ceil(in / block_size) blocks */
} sp_call;

typedef struct {
    lc_job base;                      /* first: lc_run hands the job back as an lc_job pointer */
    sp_call c;
    void *gyt;                        /* input grad: gy transposed, (out, o, n) */
    int64_t ig_nb, ig_part;           /* input grad: samples per tile, inputs per part */
} sp_job;

#include "sparse_checks.h"

/* ------------------------------------------------------------------------- kernels */
/* Bodies per dtype T, always inlined into the ISA wrappers below (AVX-512, AVX2+FMA, baseline).
 * The forward and the weight grad walk the batch in tiles of samples and the output channels in
 * blocks of SP_OB, whose filters (or their gradients) sit side by side in a connection's (O, C)
 * filter: each x element is loaded once per block; the forward sums in vectors along the samples.
 * SP_TILES calls TILE(c, a, b, n0, o0, nt, ob) over every tile and block, sizes as constants
 * (SP_NT_OB with SP_OB, SP_NT with 1, and 1 for the last samples), so that they compile unrolled. */
#define SP_TILES(TILE, c, a, b)                                                                       \
    for (int64_t o0 = 0; o0 < (c)->o;) {                                                              \
        if ((c)->o - o0 >= SP_OB) {                                                                   \
            const int64_t nfull = (c)->n - (c)->n % SP_NT_OB;                                         \
            for (int64_t n0 = 0; n0 < nfull; n0 += SP_NT_OB) TILE(c, a, b, n0, o0, SP_NT_OB, SP_OB); \
            for (int64_t n0 = nfull; n0 < (c)->n; n0++) TILE(c, a, b, n0, o0, 1, SP_OB);              \
            o0 += SP_OB;                                                                              \
        } else {                                                                                      \
            const int64_t nfull = (c)->n - (c)->n % SP_NT;                                            \
            for (int64_t n0 = 0; n0 < nfull; n0 += SP_NT) TILE(c, a, b, n0, o0, SP_NT, 1);           \
            for (int64_t n0 = nfull; n0 < (c)->n; n0++) TILE(c, a, b, n0, o0, 1, 1);                  \
            o0 += 1;                                                                                  \
        }                                                                                             \
    }
#define SP_LINE(T) ((int64_t)(64 / sizeof(T)))
typedef float sp_vec_f32 __attribute__((vector_size(SP_NT * sizeof(float))));
typedef double sp_vec_f64 __attribute__((vector_size(SP_NT * sizeof(double))));
#define SP_BODIES(T, S)                                                                               \
    static inline __attribute__((always_inline)) void sp_fw_tile_##S(const sp_call *c, int64_t jb,    \
                                                                     int64_t je, int64_t n0, int64_t o0, \
                                                                     const int nt, const int ob)      \
    {                                                                                                 \
        const T *x = c->x, *w = c->w;                                                                 \
        T *y = c->y;                                                                                  \
        const int64_t xs = c->xs[0], oc = c->o * c->c;                                                \
        for (int64_t j = jb; j < je; j++) {                                                           \
            sp_vec_##S sum[SP_OB] = {0};                                                              \
            for (int64_t r = c->row[j]; r < c->row[j + 1]; r++) {                                     \
                const int64_t *run = c->runs + 4 * r, len = run[2];                                   \
                for (int64_t k = 0; k < len; k++) {                                                   \
                    const T *wp = w + (run[1] + k) * oc + o0 * c->c;                                  \
                    for (int64_t ch = 0; ch < c->c; ch++) {                                           \
                        const T *xp = x + n0 * xs + ch * c->xs[1] + run[0] + k;                       \
                        sp_vec_##S xv = {0};                                                          \
                        for (int t = 0; t < nt; t++) xv[t] = xp[t * xs];                              \
                        for (int q = 0; q < ob; q++) sum[q] += xv * wp[q * c->c + ch];                \
                    }                                                                                 \
                }                                                                                     \
            }                                                                                         \
            for (int q = 0; q < ob; q++)                                                              \
                for (int t = 0; t < nt; t++) y[(n0 + t) * c->ys[0] + (o0 + q) * c->ys[1] + j * c->ys[2]] = sum[q][t]; \
        }                                                                                             \
    }                                                                                                 \
    static inline __attribute__((always_inline)) void sp_wg_tile_##S(const sp_call *c, int64_t r0,    \
                                                                     int64_t r1, int64_t n0, int64_t o0, \
                                                                     const int nt, const int ob)      \
    {                                                                                                 \
        const T *x = c->x, *gy = c->y;                                                                \
        T *gw = c->w;                                                                                 \
        const int64_t xs = c->xs[0], oc = c->o * c->c;                                                \
        for (int64_t r = r0; r < r1; r++) {                                                           \
            const int64_t *run = c->runs + 4 * r, len = run[2];                                       \
            T a[SP_OB * SP_NT_OB > SP_NT ? SP_OB * SP_NT_OB : SP_NT]; /* (ob, nt) */                   \
            for (int q = 0; q < ob; q++)                                                              \
                for (int t = 0; t < nt; t++) a[q * nt + t] = gy[(n0 + t) * c->ys[0] + (o0 + q) * c->ys[1] + run[3] * c->ys[2]]; \
            for (int64_t ch = 0; ch < c->c; ch++) {                                                   \
                const T *xp = x + n0 * xs + ch * c->xs[1] + run[0];                                   \
                T *gp = gw + run[1] * oc + o0 * c->c + ch;                                            \
                for (int64_t k = 0; k < len; k++) {                                                   \
                    T xv[SP_NT];                                                                      \
                    for (int t = 0; t < nt; t++) xv[t] = xp[t * xs + k];                              \
                    for (int q = 0; q < ob; q++) {                                                    \
                        T sum = gp[k * oc + q * c->c];                                                \
                        for (int t = 0; t < nt; t++) sum += a[q * nt + t] * xv[t];                    \
                        gp[k * oc + q * c->c] = sum;                                                  \
                    }                                                                                 \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    /* the weight grad of one-element filters (1 -> 1 channel): vectors along each run */           \
    static inline __attribute__((always_inline)) void sp_wg1_tile_##S(const sp_call *c, int64_t r0,   \
                                                                      int64_t r1, int64_t n0, int64_t o0, \
                                                                      const int nt, const int ob)     \
    {                                                                                                 \
        (void)o0, (void)ob; /* one output channel: SP_TILES passes 0 and 1 */                        \
        const T *x = c->x, *gy = c->y;                                                                \
        T *gw = c->w;                                                                                 \
        const int64_t xs = c->xs[0];                                                                  \
        for (int64_t r = r0; r < r1; r++) {                                                           \
            const int64_t *run = c->runs + 4 * r, len = run[2];                                       \
            T a[SP_NT];                                                                               \
            for (int t = 0; t < nt; t++) a[t] = gy[(n0 + t) * c->ys[0] + run[3] * c->ys[2]];          \
            const T *xp = x + n0 * xs + run[0];                                                       \
            T *gp = gw + run[1];                                                                      \
            for (int64_t k = 0; k < len; k++) {                                                       \
                T sum = gp[k];                                                                        \
                for (int t = 0; t < nt; t++) sum += a[t] * xp[t * xs + k];                            \
                gp[k] = sum;                                                                          \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    /* input grad, inputs lo..hi (at most SP_IG_ELEMENTS / (c * mt) of them) and samples m0..m0 + mt: \
     * buf (hi - lo, c, mt) summed with vectors along the samples from gyt (out, o, n), then       \
     * written to the samples' rows of gx, whole aligned 64-byte lines by put (sp_put_*) */        \
    static inline __attribute__((always_inline)) void sp_ig_part_##S(const sp_job *jb, int64_t lo,    \
                                                                     int64_t hi, int64_t m0,          \
                                                                     int64_t mt, T *restrict buf,     \
                                                                     void (*put)(T *, const T *, int64_t)) \
    {                                                                                                 \
        const sp_call *c = &jb->c;                                                                    \
        const T *restrict gyt = jb->gyt, *w = c->w;                                                   \
        T *gx = c->x;                                                                                 \
        const int64_t n = c->n, cm = c->c * mt;                                                       \
        memset(buf, 0, (size_t)((hi - lo) * cm) * sizeof(T));                                         \
        for (int64_t i = lo; i < hi; i++)                                                             \
            for (int64_t k = c->col[i]; k < c->col[i + 1]; k++) {                                     \
                const int64_t e = c->slots[2 * k], j = c->slots[2 * k + 1];                           \
                for (int64_t o = 0; o < c->o; o++) {                                                  \
                    const T *restrict g = gyt + (j * c->o + o) * n + m0;                              \
                    for (int64_t ch = 0; ch < c->c; ch++) {                                           \
                        const T wk = w[(e * c->o + o) * c->c + ch];                                   \
                        T *restrict b = buf + (i - lo) * cm + ch * mt;                                \
                        for (int64_t m = 0; m < mt; m++) b[m] += wk * g[m];                           \
                    }                                                                                 \
                }                                                                                     \
            }                                                                                         \
        for (int64_t i0 = lo; i0 < hi; i0 += SP_LINE(T)) { /* one 64-byte line of each row at a time */ \
            const int64_t i1 = lc_min(i0 + SP_LINE(T), hi);                                           \
            for (int64_t ch = 0; ch < c->c; ch++)                                                     \
                for (int64_t m = 0; m < mt; m++) {                                                    \
                    T *restrict dst = gx + (m0 + m) * c->xs[0] + ch * c->xs[1];                       \
                    const T *src = buf + ch * mt + m;                                                 \
                    if (i1 - i0 == SP_LINE(T) && ((uintptr_t)(dst + i0) & 63) == 0)                   \
                        put(dst + i0, src + (i0 - lo) * cm, cm);                                      \
                    else                                                                              \
                        for (int64_t i = i0; i < i1; i++) dst[i] = src[(i - lo) * cm];                \
                }                                                                                     \
        }                                                                                             \
    }                                                                                                 \
    /* gyt[j, o, m] = gy[m, o, j] for outputs begin..end */                                           \
    static inline __attribute__((always_inline)) int sp_transpose_gy_##S(const lc_job *job,           \
                                                                         int64_t begin, int64_t end)  \
    {                                                                                                 \
        const sp_job *jb = (const sp_job *)job;                                                       \
        const sp_call *c = &jb->c;                                                                    \
        const T *gy = c->y;                                                                           \
        T *gyt = jb->gyt;                                                                             \
        for (int64_t j = begin; j < end; j++)                                                         \
            for (int64_t o = 0; o < c->o; o++)                                                        \
                for (int64_t m = 0; m < c->n; m++)                                                    \
                    gyt[(j * c->o + o) * c->n + m] = gy[m * c->ys[0] + o * c->ys[1] + j * c->ys[2]];  \
        return LC_OK;                                                                                 \
    }                                                                                                 \
    /* forward: items are outputs, in tiles of SP_TILE (their weights stay in cache) */              \
    static inline __attribute__((always_inline)) int sp_forward_##S(const lc_job *job, int64_t begin, \
                                                                    int64_t end)                    \
    {                                                                                                 \
        const sp_call *c = &((const sp_job *)job)->c;                                                 \
        for (int64_t jb = begin; jb < end; jb += SP_TILE) {                                           \
            const int64_t je = lc_min(jb + SP_TILE, end);                                             \
            SP_TILES(sp_fw_tile_##S, c, jb, je);                                                      \
        }                                                                                             \
        return LC_OK;                                                                                 \
    }                                                                                                 \
    /* weight grad: items are outputs, in tiles; a tile's gradient zeroed, then summed in cache */    \
    static inline __attribute__((always_inline)) int sp_weight_grad_##S(const lc_job *job,             \
                                                                        int64_t begin, int64_t end)  \
    {                                                                                                 \
        const sp_call *c = &((const sp_job *)job)->c;                                                 \
        T *gw = c->w;                                                                                 \
        for (int64_t jb = begin; jb < end; jb += SP_TILE) {                                           \
            const int64_t r0 = c->row[jb], r1 = c->row[lc_min(jb + SP_TILE, end)];                   \
            for (int64_t r = r0; r < r1; r++)                                                         \
                memset(gw + c->runs[4 * r + 1] * c->o * c->c, 0, c->runs[4 * r + 2] * c->o * c->c * sizeof(T)); \
            if (c->o * c->c == 1) {                                                                   \
                SP_TILES(sp_wg1_tile_##S, c, r0, r1);                                                 \
            } else {                                                                                  \
                SP_TILES(sp_wg_tile_##S, c, r0, r1);                                                  \
            }                                                                                         \
        }                                                                                             \
        return LC_OK;                                                                                 \
    }                                                                                                 \
    /* input grad: items are blocks of inputs, in parts whose sums fit the scratch */             \
    static inline __attribute__((always_inline)) int sp_input_grad_##S(const lc_job *job,              \
                                                                       int64_t begin, int64_t end,   \
                                                                       void *scratch,                 \
                                                                       void (*put)(T *, const T *, int64_t)) \
    {                                                                                                 \
        const sp_job *jb = (const sp_job *)job;                                                       \
        const sp_call *c = &jb->c;                                                                    \
        const int64_t mt = jb->ig_nb, part = jb->ig_part;                                             \
        for (int64_t b = begin; b < end; b++) {                                                       \
            const int64_t lo = b * c->block_size, hi = lc_min(lo + c->block_size, c->in);            \
            for (int64_t m0 = 0; m0 < c->n; m0 += mt)                                                 \
                for (int64_t i = lo; i < hi; i += part)                                               \
                    sp_ig_part_##S(jb, i, lc_min(i + part, hi), m0, lc_min(mt, c->n - m0), scratch, put); \
        }                                                                                             \
        return LC_OK;                                                                                 \
    }
SP_BODIES(float, f32)
SP_BODIES(double, f64)

enum { SP_FORWARD, SP_INPUT_GRAD, SP_WEIGHT_GRAD, SP_TRANSPOSE_GY, SP_OPS };

/* The range functions of one ISA: [op][dtype]. */
#define SP_WRAPPERS(ATTR, I)                                                                          \
    ATTR static int sp_fw_f32_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_forward_f32(j, b, e); } \
    ATTR static int sp_fw_f64_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_forward_f64(j, b, e); } \
    ATTR static int sp_ig_f32_##I(const lc_job *j, int64_t b, int64_t e, void *s)                     \
    { int status = sp_input_grad_f32(j, b, e, s, sp_put_f32_##I); SP_FENCE_##I(); return status; }    \
    ATTR static int sp_ig_f64_##I(const lc_job *j, int64_t b, int64_t e, void *s)                     \
    { int status = sp_input_grad_f64(j, b, e, s, sp_put_f64_##I); SP_FENCE_##I(); return status; }    \
    ATTR static int sp_gt_f32_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_transpose_gy_f32(j, b, e); } \
    ATTR static int sp_gt_f64_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_transpose_gy_f64(j, b, e); } \
    ATTR static int sp_wg_f32_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_weight_grad_f32(j, b, e); } \
    ATTR static int sp_wg_f64_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_weight_grad_f64(j, b, e); } \
    static const lc_range_fn sp_fns_##I[SP_OPS][2] = {{sp_fw_f32_##I, sp_fw_f64_##I}, {sp_ig_f32_##I, sp_ig_f64_##I}, \
                                                      {sp_wg_f32_##I, sp_wg_f64_##I}, {sp_gt_f32_##I, sp_gt_f64_##I}};

/* put(dst, src, s): dst[k] = src[k * s] for the SP_LINE(T) elements of one aligned 64-byte line,
 * stored past the caches where the ISA can (gx is written once: no read of the line first). */
#define SP_PUT(ATTR, I, T, S, STORE)                                                                  \
    ATTR static inline void sp_put_##S##_##I(T *dst, const T *src, int64_t s)                        \
    {                                                                                                 \
        T line[SP_LINE(T)] __attribute__((aligned(64)));                                              \
        for (int k = 0; k < SP_LINE(T); k++) line[k] = src[k * s];                                    \
        STORE;                                                                                        \
    }
SP_PUT(, portable, float, f32, memcpy(dst, line, 64))
SP_PUT(, portable, double, f64, memcpy(dst, line, 64))
#define SP_FENCE_portable()
SP_WRAPPERS(, portable)
#ifdef LC_X86
#include <immintrin.h>
#define SP_AVX2 __attribute__((target("avx2,fma")))
#define SP_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
SP_PUT(SP_AVX2, avx2, float, f32, (_mm256_stream_ps(dst, _mm256_load_ps(line)), _mm256_stream_ps(dst + 8, _mm256_load_ps(line + 8))))
SP_PUT(SP_AVX2, avx2, double, f64, (_mm256_stream_pd(dst, _mm256_load_pd(line)), _mm256_stream_pd(dst + 4, _mm256_load_pd(line + 4))))
SP_PUT(SP_AVX512, avx512, float, f32, _mm512_stream_ps(dst, _mm512_load_ps(line)))
SP_PUT(SP_AVX512, avx512, double, f64, _mm512_stream_pd(dst, _mm512_load_pd(line)))
#define SP_FENCE_avx2() _mm_sfence()
#define SP_FENCE_avx512() _mm_sfence()
SP_WRAPPERS(SP_AVX2, avx2)
SP_WRAPPERS(SP_AVX512, avx512)
#endif

int unshared_isa_supported(int isa);

static int sp_launch(const sp_call *call, int dtype, int isa, int threads, int op)
{
    if (isa < 0 || isa >= LC_ISAS || !unshared_isa_supported(isa)) return LC_BAD_ARGUMENT;
    int status = sp_check(call, dtype);
    if (status) return status;
    const lc_range_fn(*fns)[2] = sp_fns_portable;
#ifdef LC_X86
    if (isa == LC_AVX512) fns = sp_fns_avx512;
    if (isa == LC_AVX2) fns = sp_fns_avx2;
#endif
    sp_job job;
    memset(&job, 0, sizeof(job));
    job.c = *call;
    sp_sync_pool();
    if (op != SP_INPUT_GRAD) return lc_run(&job.base, fns[op][dtype], call->out, 0, threads);
    /* the input grad: gy transposed, then the blocks */
    int64_t item = dtype == LC_FLOAT32 ? sizeof(float) : sizeof(double), bytes;
    if (__builtin_mul_overflow(call->out, call->o, &bytes) || __builtin_mul_overflow(bytes, call->n, &bytes) ||
        __builtin_mul_overflow(bytes, item, &bytes))
        return LC_TOO_LARGE;
    job.gyt = malloc((size_t)bytes);
    if (!job.gyt) return LC_NO_MEMORY;
    status = lc_run(&job.base, fns[SP_TRANSPOSE_GY][dtype], call->out, 0, threads);
    if (status == LC_OK) {
        job.ig_nb = lc_min(call->n, SP_IG_NB);
        /* parts of whole 64-byte lines where they hold one, so that their lines stay aligned */
        int64_t part = lc_max(1, SP_IG_ELEMENTS / (call->c * job.ig_nb));
        job.ig_part = lc_min(part >= SP_LINE(float) ? part - part % SP_LINE(float) : part, call->block_size);
        size_t scratch = (size_t)(job.ig_part * call->c * job.ig_nb * item);
        status = lc_run(&job.base, fns[SP_INPUT_GRAD][dtype], call->blocks, scratch, threads);
    }
    free(job.gyt);
    return status;
}

SP_EXPORT int unshared_sparse_forward(const sp_call *c, int dtype, int isa, int threads)
{
    return sp_launch(c, dtype, isa, threads, SP_FORWARD);
}

SP_EXPORT int unshared_sparse_input_grad(const sp_call *c, int dtype, int isa, int threads)
{
    return sp_launch(c, dtype, isa, threads, SP_INPUT_GRAD);
}

SP_EXPORT int unshared_sparse_weight_grad(const sp_call *c, int dtype, int isa, int threads)
{
    return sp_launch(c, dtype, isa, threads, SP_WEIGHT_GRAD);
}
