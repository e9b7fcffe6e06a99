/* The compiled CPU kernels of unshared.SparselyConnected (plain C, called through ctypes).
 *
 * A layer of nnz connections (input i, output j), each with an (O, C) filter:
 *     y[n, o, j] = sum over connections e = (i, j) of sum_c w[o, c, e] * x[n, c, i]
 * Python builds two lists of the connections:
 * - runs by output, a CSR (row: out + 1 pointers; a run: input start, edge start, length, output:
 *   consecutive inputs joined to one output by consecutive edges, a gene's SNPs): forward and
 *   weight grad, threads over tiles of outputs;
 * - slots by input, a CSR (col: in + 1 pointers; a slot: edge, output): input grad, threads over
 *   blocks of inputs, each gx element summed in registers and written once.
 * All three walk the batch in tiles of samples, whose rows of x (gx) are read (written) in order.
 * No gathered copy of the input, no scatter between threads.
 *
 * Like dispatch.c, nothing is trusted: sp_check verifies every size, every run and slot against
 * the extents, and the memory of x, y and w, before any kernel runs. Threads: lc_run of
 * threads.h (PyTorch's OpenMP team when loaded, else pthreads), the pool chosen by
 * unshared_thread_pool. */
#include <stdatomic.h>
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

#define SP_ABI_VERSION 2
/* outputs per tile of the forward and the weight gradient */
#define SP_TILE 256
/* samples per tile of the batch */
#define SP_NT 4

SP_EXPORT int unshared_sparse_abi_version(void) { return SP_ABI_VERSION; }

/* One call (mirrored by a ctypes.Structure in unshared/sparse/kernels.py). */
typedef struct {
    int64_t n, c, o;                  /* batch, in channels, out channels */
    int64_t in, out, nnz;             /* in_features, out_features, connections */
    void *x; int64_t xs[3];           /* input or its gradient (n, c, in), strides (xs[2] == 1) */
    void *y; int64_t ys[3];           /* output or its gradient (n, o, out), strides */
    void *w;                          /* weight or its gradient, (o, c, nnz) contiguous */
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
} sp_job;

/* ------------------------------------------------------------------------- checks */

static int sp_inside(const int64_t size[3], const int64_t stride[3], int64_t extent)
{
    int64_t last = 0, term;
    for (int d = 0; d < 3; d++)
        if (stride[d] < 0 || __builtin_mul_overflow(size[d] - 1, stride[d], &term) ||
            __builtin_add_overflow(last, term, &last))
            return 0;
    return last < extent;
}

/* A run (i0, e0, len, j) lies inside the inputs, the edges and the outputs. */
static int sp_run_ok(const int64_t *r, const sp_call *c)
{
    int64_t end;
    return r[2] >= 1 && r[0] >= 0 && !__builtin_add_overflow(r[0], r[2], &end) && end <= c->in && r[1] >= 0 &&
           !__builtin_add_overflow(r[1], r[2], &end) && end <= c->nnz && r[3] >= 0 && r[3] < c->out;
}

static int sp_check(const sp_call *c, int dtype)
{
    if (dtype != LC_FLOAT32 && dtype != LC_FLOAT64) return LC_BAD_ARGUMENT;
    if (c->n <= 0 || c->c <= 0 || c->o <= 0 || c->in <= 0 || c->out <= 0 || c->nnz <= 0 || c->nruns < 0 ||
        c->block_size <= 0 || c->xs[2] != 1 || !c->row || !c->runs || !c->col || !c->slots)
        return LC_BAD_ARGUMENT;
    int64_t w_size;
    if (__builtin_mul_overflow(c->o, c->c, &w_size) || __builtin_mul_overflow(w_size, c->nnz, &w_size))
        return LC_TOO_LARGE;
    const int64_t xsize[3] = {c->n, c->c, c->in}, ysize[3] = {c->n, c->o, c->out};
    if (!c->x || !sp_inside(xsize, c->xs, c->x_extent)) return LC_BAD_X;
    if (!c->y || !sp_inside(ysize, c->ys, c->y_extent)) return LC_BAD_Y;
    if (!c->w || w_size > c->w_extent) return LC_BAD_W;
    if (c->row[0] != 0 || c->row[c->out] != c->nruns) return LC_BAD_BANK;
    for (int64_t j = 0; j < c->out; j++) {
        if (c->row[j + 1] < c->row[j] || c->row[j + 1] > c->nruns) return LC_BAD_BANK;
        for (int64_t r = c->row[j]; r < c->row[j + 1]; r++)
            if (!sp_run_ok(c->runs + 4 * r, c) || c->runs[4 * r + 3] != j) return LC_BAD_BANK;
    }
    if (c->blocks != c->in / c->block_size + (c->in % c->block_size != 0) || c->col[0] != 0 || c->col[c->in] != c->nnz)
        return LC_BAD_BANK;
    for (int64_t i = 0; i < c->in; i++) {
        if (c->col[i + 1] < c->col[i] || c->col[i + 1] > c->nnz) return LC_BAD_BANK;
        for (int64_t k = c->col[i]; k < c->col[i + 1]; k++)
            if (c->slots[2 * k] < 0 || c->slots[2 * k] >= c->nnz || c->slots[2 * k + 1] < 0 ||
                c->slots[2 * k + 1] >= c->out)
                return LC_BAD_BANK;
    }
    return LC_OK;
}

/* ------------------------------------------------------------------------- kernels */
/* Bodies per dtype T, always inlined into the ISA wrappers below, which compile them for AVX-512,
 * AVX2+FMA or the baseline. */
/* Each kernel walks the batch in tiles of SP_NT samples: a run's weights (or its weight gradient)
 * are loaded once for the tile's samples, whose rows of x are read in order. The tile functions
 * take nt as a constant (SP_NT, or 1 for the last samples), so that they compile unrolled. */
#define SP_BODIES(T, S)                                                                               \
    static inline __attribute__((always_inline)) void sp_fw_tile_##S(const sp_call *c, int64_t jb,    \
                                                                     int64_t je, int64_t n0, const int nt) \
    {                                                                                                 \
        const T *x = c->x, *w = c->w;                                                                 \
        T *y = c->y;                                                                                  \
        const int64_t xs = c->xs[0];                                                                  \
        for (int64_t o = 0; o < c->o; o++)                                                            \
            for (int64_t j = jb; j < je; j++) {                                                       \
                T sum[SP_NT] = {0};                                                                   \
                for (int64_t r = c->row[j]; r < c->row[j + 1]; r++) {                                 \
                    const int64_t *run = c->runs + 4 * r, len = run[2];                               \
                    for (int64_t ch = 0; ch < c->c; ch++) {                                           \
                        const T *xp = x + n0 * xs + ch * c->xs[1] + run[0];                           \
                        const T *wp = w + (o * c->c + ch) * c->nnz + run[1];                          \
                        for (int64_t k = 0; k < len; k++) {                                           \
                            const T wk = wp[k];                                                       \
                            for (int t = 0; t < nt; t++) sum[t] += xp[t * xs + k] * wk;               \
                        }                                                                             \
                    }                                                                                 \
                }                                                                                     \
                for (int t = 0; t < nt; t++) y[(n0 + t) * c->ys[0] + o * c->ys[1] + j * c->ys[2]] = sum[t]; \
            }                                                                                         \
    }                                                                                                 \
    static inline __attribute__((always_inline)) void sp_wg_tile_##S(const sp_call *c, int64_t r0,    \
                                                                     int64_t r1, int64_t n0, const int nt) \
    {                                                                                                 \
        const T *x = c->x, *gy = c->y;                                                                \
        T *gw = c->w;                                                                                 \
        const int64_t xs = c->xs[0];                                                                  \
        for (int64_t ch = 0; ch < c->c; ch++)                                                         \
            for (int64_t o = 0; o < c->o; o++)                                                        \
                for (int64_t r = r0; r < r1; r++) {                                                   \
                    const int64_t *run = c->runs + 4 * r, len = run[2];                               \
                    T a[SP_NT];                                                                       \
                    for (int t = 0; t < nt; t++) a[t] = gy[(n0 + t) * c->ys[0] + o * c->ys[1] + run[3] * c->ys[2]]; \
                    const T *xp = x + n0 * xs + ch * c->xs[1] + run[0];                               \
                    T *gp = gw + (o * c->c + ch) * c->nnz + run[1];                                   \
                    for (int64_t k = 0; k < len; k++) {                                               \
                        T sum = gp[k];                                                                \
                        for (int t = 0; t < nt; t++) sum += a[t] * xp[t * xs + k];                    \
                        gp[k] = sum;                                                                  \
                    }                                                                                 \
                }                                                                                     \
    }                                                                                                 \
    static inline __attribute__((always_inline)) void sp_ig_tile_##S(const sp_call *c, int64_t b,     \
                                                                     int64_t n0, const int nt)        \
    {                                                                                                 \
        const T *gy = c->y, *w = c->w;                                                                \
        T *gx = c->x;                                                                                 \
        const int64_t xs = c->xs[0], lo = b * c->block_size, hi = lc_min(lo + c->block_size, c->in); \
        for (int64_t ch = 0; ch < c->c; ch++) {                                                       \
            T *gxp = gx + n0 * xs + ch * c->xs[1];                                                    \
            for (int64_t i = lo; i < hi; i++) {                                                       \
                T sum[SP_NT] = {0};                                                                   \
                for (int64_t k = c->col[i]; k < c->col[i + 1]; k++) {                                 \
                    const int64_t e = c->slots[2 * k], j = c->slots[2 * k + 1];                       \
                    const T *gyp = gy + n0 * c->ys[0] + j * c->ys[2];                                 \
                    for (int64_t o = 0; o < c->o; o++) {                                              \
                        const T wk = w[(o * c->c + ch) * c->nnz + e];                                 \
                        for (int t = 0; t < nt; t++) sum[t] += wk * gyp[t * c->ys[0] + o * c->ys[1]]; \
                    }                                                                                 \
                }                                                                                     \
                for (int t = 0; t < nt; t++) gxp[t * xs + i] = sum[t];                                \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    /* forward: items are outputs, in tiles of SP_TILE (their weights stay in cache) */              \
    static inline __attribute__((always_inline)) int sp_forward_##S(const lc_job *job, int64_t begin, \
                                                                    int64_t end)                    \
    {                                                                                                 \
        const sp_call *c = &((const sp_job *)job)->c;                                                 \
        for (int64_t jb = begin; jb < end; jb += SP_TILE) {                                           \
            const int64_t je = lc_min(jb + SP_TILE, end);                                             \
            int64_t n0 = 0;                                                                           \
            for (; n0 + SP_NT <= c->n; n0 += SP_NT) sp_fw_tile_##S(c, jb, je, n0, SP_NT);            \
            for (; n0 < c->n; n0++) sp_fw_tile_##S(c, jb, je, n0, 1);                                 \
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
                for (int64_t oc = 0; oc < c->o * c->c; oc++)                                          \
                    memset(gw + oc * c->nnz + c->runs[4 * r + 1], 0, c->runs[4 * r + 2] * sizeof(T)); \
            int64_t n0 = 0;                                                                           \
            for (; n0 + SP_NT <= c->n; n0 += SP_NT) sp_wg_tile_##S(c, r0, r1, n0, SP_NT);            \
            for (; n0 < c->n; n0++) sp_wg_tile_##S(c, r0, r1, n0, 1);                                 \
        }                                                                                             \
        return LC_OK;                                                                                 \
    }                                                                                                 \
    /* input grad: items are blocks of inputs, each gx element summed in registers */            \
    static inline __attribute__((always_inline)) int sp_input_grad_##S(const lc_job *job,              \
                                                                       int64_t begin, int64_t end)   \
    {                                                                                                 \
        const sp_call *c = &((const sp_job *)job)->c;                                                 \
        for (int64_t b = begin; b < end; b++) {                                                       \
            int64_t n0 = 0;                                                                           \
            for (; n0 + SP_NT <= c->n; n0 += SP_NT) sp_ig_tile_##S(c, b, n0, SP_NT);                 \
            for (; n0 < c->n; n0++) sp_ig_tile_##S(c, b, n0, 1);                                      \
        }                                                                                             \
        return LC_OK;                                                                                 \
    }

SP_BODIES(float, f32)
SP_BODIES(double, f64)

enum { SP_FORWARD, SP_INPUT_GRAD, SP_WEIGHT_GRAD, SP_OPS };

/* The range functions of one ISA: [op][dtype]. */
#define SP_WRAPPERS(ATTR, I)                                                                          \
    ATTR static int sp_fw_f32_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_forward_f32(j, b, e); } \
    ATTR static int sp_fw_f64_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_forward_f64(j, b, e); } \
    ATTR static int sp_ig_f32_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_input_grad_f32(j, b, e); } \
    ATTR static int sp_ig_f64_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_input_grad_f64(j, b, e); } \
    ATTR static int sp_wg_f32_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_weight_grad_f32(j, b, e); } \
    ATTR static int sp_wg_f64_##I(const lc_job *j, int64_t b, int64_t e, void *s) { (void)s; return sp_weight_grad_f64(j, b, e); } \
    static const lc_range_fn sp_fns_##I[SP_OPS][2] = {{sp_fw_f32_##I, sp_fw_f64_##I}, {sp_ig_f32_##I, sp_ig_f64_##I}, \
                                                      {sp_wg_f32_##I, sp_wg_f64_##I}};

SP_WRAPPERS(, portable)
#ifdef LC_X86
SP_WRAPPERS(__attribute__((target("avx2,fma"))), avx2)
SP_WRAPPERS(__attribute__((target("avx512f,avx512vl,avx2,fma"))), avx512)
#endif

int unshared_isa_supported(int isa);

static int sp_launch(const sp_call *call, int dtype, int isa, int threads, int op)
{
    if (isa < 0 || isa >= LC_ISAS || !unshared_isa_supported(isa)) return LC_BAD_ARGUMENT;
    int status = sp_check(call, dtype);
    if (status) return status;
    lc_range_fn fn = sp_fns_portable[op][dtype];
#ifdef LC_X86
    if (isa == LC_AVX512) fn = sp_fns_avx512[op][dtype];
    if (isa == LC_AVX2) fn = sp_fns_avx2[op][dtype];
#endif
    sp_job job;
    memset(&job, 0, sizeof(job));
    job.c = *call;
    sp_sync_pool();
    return lc_run(&job.base, fn, op == SP_INPUT_GRAD ? call->blocks : call->out, 0, threads);
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
