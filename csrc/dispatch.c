/* Entry points of the compiled CPU kernels: instruction-set dispatch, per-call threads.
 *
 * Each call gets its own work counter and its own buffers, so several threads may call at once.
 * Its threads are those of the OpenMP runtime that PyTorch has loaded, found at run time
 * (GOMP_parallel, which libgomp and LLVM's and Intel's runtimes export): the team that runs
 * PyTorch's own parallel ops, whose idle workers spin for a while after each op, runs ours too,
 * instead of a second set of threads fighting it for the cores. Where no runtime is loaded (or
 * unshared_thread_pool(0) asked), pthreads are started per call and joined before it returns.
 * Not linked against OpenMP: two runtimes in one process clash. The one global setting is the
 * choice of pool, an atomic.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "unshared_cpu.h"

#ifdef _WIN32
#define LC_EXPORT __declspec(dllexport)
#else
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#define LC_EXPORT __attribute__((visibility("default")))
#endif

/* Bumped whenever lc_call or an entry point changes: the Python side checks it. */
#define LC_ABI_VERSION 6

LC_EXPORT int unshared_abi_version(void) { return LC_ABI_VERSION; }

LC_EXPORT int unshared_isa_supported(int isa)
{
    switch (isa) {
    case LC_PORTABLE:
        return 1;
#ifdef LC_X86
    case LC_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case LC_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    default:
        return 0;
    }
}

static const lc_kernels *kernels_for(int isa, int dtype)
{
    if (dtype != LC_FLOAT32 && dtype != LC_FLOAT64) return NULL;
    if (!unshared_isa_supported(isa)) return NULL;
    int f32 = dtype == LC_FLOAT32;
    switch (isa) {
#ifdef LC_X86
    case LC_AVX512:
        return f32 ? &kernels_avx512_f32 : &kernels_avx512_f64;
    case LC_AVX2:
        return f32 ? &kernels_avx2_f32 : &kernels_avx2_f64;
#endif
    default:
        return f32 ? &kernels_portable_f32 : &kernels_portable_f64;
    }
}

#include "threads.h"

/* ------------------------------------------------------------------------- the calls */

/* *acc += a * b, or 0 on int64 overflow (a, b >= 0). */
static int lc_madd(int64_t *acc, int64_t a, int64_t b)
{
    int64_t product;
    return !__builtin_mul_overflow(a, b, &product) && !__builtin_add_overflow(*acc, product, acc);
}

/* Whether every element of an (n, C, d, h, w) tensor of these sizes and (non-negative) strides
 * lies within `extent` elements of its pointer: the largest offset is sum((size - 1) * stride). */
static int lc_inside(const int64_t size[5], const int64_t stride[5], int64_t extent)
{
    int64_t last = 0;
    for (int d = 0; d < 5; d++)
        if (stride[d] < 0 || !lc_madd(&last, size[d] - 1, stride[d])) return 0;
    return last < extent;
}

/* Everything a kernel will read or compute, checked before any runs: sizes, the extents of x, y,
 * w and the bias, the bank indices, and that no coordinate (o * s - pad + k * dil, i + pad - k * dil, both
 * bounded by in + pad + (k - 1) * dil + (out - 1) * s) nor buffer size overflows. */
static int lc_check(const lc_call *c)
{
    if (c->n <= 0 || c->groups <= 0 || c->cg <= 0 || c->og <= 0 || c->banks <= 0 || c->path < LC_PATH_AUTO ||
        c->path > LC_PATH_ROWS)
        return LC_BAD_ARGUMENT;
    int64_t K = 1, P = 1, C, O, R, W, bound;
    for (int d = 0; d < 3; d++) {
        if (c->in[d] <= 0 || c->out[d] <= 0 || c->k[d] <= 0 || c->s[d] <= 0 || c->dil[d] <= 0 || c->pad[d] < 0)
            return LC_BAD_ARGUMENT;
        bound = c->in[d];
        if (!lc_madd(&bound, c->pad[d], 1) || !lc_madd(&bound, c->k[d] - 1, c->dil[d]) ||
            !lc_madd(&bound, c->out[d] - 1, c->s[d]) || __builtin_mul_overflow(K, c->k[d], &K) ||
            __builtin_mul_overflow(P, c->out[d], &P))
            return LC_TOO_LARGE;
    }
    /* the internal buffers: a channels-last copy of x (n * in * C) and gyt (P * O * npad), 8-byte elements */
    int64_t copy, gyt;
    if (__builtin_mul_overflow(c->n, 8, &copy) || __builtin_add_overflow(c->n, 64, &gyt) ||
        __builtin_mul_overflow(gyt, 8, &gyt) || __builtin_mul_overflow(c->groups, c->cg, &C) || __builtin_mul_overflow(c->groups, c->og, &O) ||
        __builtin_mul_overflow(K, c->cg, &R) || __builtin_mul_overflow(c->banks, O, &W) ||
        __builtin_mul_overflow(W, R, &W) || __builtin_mul_overflow(copy, C, &copy) ||
        __builtin_mul_overflow(gyt, P, &gyt) || __builtin_mul_overflow(gyt, O, &gyt))
        return LC_TOO_LARGE;
    for (int d = 0; d < 3; d++)
        if (__builtin_mul_overflow(copy, c->in[d], &copy)) return LC_TOO_LARGE;
    const int64_t xsize[5] = {c->n, C, c->in[0], c->in[1], c->in[2]};
    const int64_t ysize[5] = {c->n, O, c->out[0], c->out[1], c->out[2]};
    if (!c->x || !lc_inside(xsize, c->xs, c->x_extent)) return LC_BAD_X;
    if (!c->y || !lc_inside(ysize, c->ys, c->y_extent)) return LC_BAD_Y;
    if (!c->w || W > c->w_extent) return LC_BAD_W;
    int64_t B;  /* the bias: (O,) shared or (O, P) per position (its gradient: always per position) */
    if (c->b && ((c->b_shared != 0 && c->b_shared != 1) || __builtin_mul_overflow(O, c->b_shared ? 1 : P, &B) ||
                 B > c->b_extent))
        return LC_BAD_BIAS;
    if (!c->bank) return c->banks == P ? LC_OK : LC_BAD_BANK;  /* one bank per position */
    if (c->bank_len != P) return LC_BAD_BANK;
    for (int64_t p = 0; p < P; p++)
        if (c->bank[p] < 0 || c->bank[p] >= c->banks) return LC_BAD_BANK;
    return LC_OK;
}

static void lc_job_init(lc_job *j, const lc_call *c)
{
    memset(j, 0, sizeof(*j));
    j->c = *c;
    j->K = c->k[0] * c->k[1] * c->k[2];
    j->R = j->K * c->cg;
    j->P = c->out[0] * c->out[1] * c->out[2];
    j->O = c->og * c->groups;
    j->merged = c->groups == 1 && c->dil[2] == 1 && c->xs[4] == c->cg;
}

/* A malloc'd block of at least `bytes` starting on a cache line (64 B), so that vector loads
 * never straddle two lines; *raw is what to free. */
static void *lc_alloc_lines(size_t bytes, void **raw)
{
    char *block = malloc(bytes + 64);
    *raw = block;
    return block ? block + (64 - (uintptr_t)block % 64) % 64 : NULL;
}

#include "layouts.h"

/* Shared banks: each bank is summed by one thread, over its positions (a counting sort). */
static int lc_weight_grad(lc_job *j, const lc_kernels *k, int threads)
{
    const lc_call *c = &j->c;
    if (!c->bank) return lc_run(j, k->weight_grad, j->P, k->patch_scratch(j), threads);
    int64_t *start = calloc((size_t)c->banks + 1, sizeof(int64_t)), *order = malloc((size_t)j->P * sizeof(int64_t));
    int64_t *fill = malloc((size_t)c->banks * sizeof(int64_t));
    int status = LC_NO_MEMORY;
    if (start && order && fill) {
        status = LC_OK;
        for (int64_t p = 0; p < j->P; p++) start[c->bank[p] + 1]++;  /* indices checked by lc_check */
        for (int64_t b = 0; b < c->banks; b++) start[b + 1] += start[b];
        memcpy(fill, start, (size_t)c->banks * sizeof(int64_t));
        for (int64_t p = 0; p < j->P; p++) order[fill[c->bank[p]]++] = p;
        j->order = order;
        j->start = start;
        status = lc_run(j, k->weight_grad, c->banks, k->patch_scratch(j), threads);
    }
    free(start);
    free(order);
    free(fill);
    return status;
}

enum { LC_OP_FORWARD, LC_OP_INPUT_GRAD, LC_OP_WEIGHT_GRAD };

/* Whether a call takes the rows path: asked for, or by shape (fewer channels per group than
 * vector lanes, rows of at least half a vector; never a weight grad with shared banks). With a
 * stride along w, forward and weight grad read a copy of x with its phases apart (layouts.h):
 * at All-TNN's 3 -> 64 channels, kernel 7, stride 3, batch 16, 2-core AVX-512, forward 15.5 ->
 * 9 ms and weight grad 20.5 -> 14.8 against the channel path, but slower on AVX2 (8 lanes, smaller
 * register tiles: 16.5 and 35 ms against 14 and 20), so strided calls take it with 16 lanes only;
 * its input grad stays on the channel path there (10 ms against 55: the rows input grad writes gx
 * lane by lane with a stride). */
static int lc_rows_path(const lc_call *c, const lc_kernels *k, int op)
{
    if (op == LC_OP_WEIGHT_GRAD && c->bank) return 0;
    if (c->path != LC_PATH_AUTO) return c->path == LC_PATH_ROWS;
    int stride_ok = c->s[2] == 1 || (op != LC_OP_INPUT_GRAD && k->lanes >= 16);
    return c->cg < k->lanes && stride_ok && 2 * c->out[2] >= k->lanes;
}

/* The rows input grad: items (input row, phase along w, tile of VL positions of the phase). */
static int lc_input_grad_rows(const lc_call *c, const lc_kernels *k, int threads)
{
    lc_job j;
    lc_job_init(&j, c);
    int64_t phases = lc_min(c->s[2], c->in[2]);
    j.tiles = ((c->in[2] + c->s[2] - 1) / c->s[2] + k->lanes - 1) / k->lanes;
    return lc_run(&j, k->input_grad_rows, c->in[0] * c->in[1] * phases * j.tiles, k->input_grad_rows_scratch(&j),
                  threads);
}

/* Whether a forward of channel-major filters runs with vectors along the batch: for batches that
 * fit one vector of the half-width kernels (measured faster at DeepFace L4-L6 batch 8, slower than
 * the channel path's transpose to kernel-major at batch 16-128), unless a path is forced. */
static int lc_batch_path(const lc_call *c, const lc_kernels *k)
{
    return !c->kernel_major && c->path == LC_PATH_AUTO && k->half && c->n <= k->half->lanes;
}

/* The forward of channel-major filters with vectors along the batch (kernels_fwd_batch.h), on the
 * half-width kernels: the input copied batch-inner (xt), then the positions. */
static int lc_forward_batch(const lc_call *c, const lc_kernels *k, int dtype, int threads)
{
    k = k->half;
    lc_job j;
    lc_job_init(&j, c);
    j.npad = k->lanes;
    int64_t rows = c->in[0] * c->in[1] * c->in[2] + 1, bytes = dtype == LC_FLOAT32 ? 4 : 8;
    if (__builtin_mul_overflow(bytes, c->groups * c->cg, &bytes) || __builtin_mul_overflow(bytes, rows, &bytes) ||
        __builtin_mul_overflow(bytes, j.npad, &bytes))
        return LC_TOO_LARGE;
    void *block;
    j.xt = lc_alloc_lines((size_t)bytes, &block);
    if (!j.xt) return LC_NO_MEMORY;
    int status = lc_run(&j, k->transpose_x, c->groups * c->cg, 0, threads);
    if (status == LC_OK) status = lc_run(&j, k->forward_batch, j.P, k->fwd_batch_scratch(&j), threads);
    free(block);
    return status;
}

/* forward or weight grad: the channel path reads x's patches with channel stride 1 */
static int lc_patch_op(const lc_call *c, int dtype, int isa, int threads, int weight_grad)
{
    const lc_kernels *k = kernels_for(isa, dtype);
    int status = k ? lc_check(c) : LC_BAD_ARGUMENT;
    if (status) return status;
    if (weight_grad && c->b && c->b_shared) return LC_BAD_BIAS;  /* the bias gradient is written per position */
    lc_job j;
    void *block;
    lc_job_init(&j, c);
    if (lc_rows_path(c, k, weight_grad ? LC_OP_WEIGHT_GRAD : LC_OP_FORWARD)) {
        int64_t items = c->out[0] * c->out[1] * ((c->out[2] + k->lanes - 1) / k->lanes);
        status = lc_phases_apart(&j, dtype, threads, &block);
        if (status == LC_OK)
            status = lc_run(&j, weight_grad ? k->weight_grad_rows : k->forward_rows, items, k->rows_scratch(&j), threads);
        free(block);
        return status;
    }
    if (!weight_grad && lc_batch_path(c, k)) return lc_forward_batch(c, k, dtype, threads);
    status = lc_channel_inner(&j, dtype, threads, &block);
    if (status == LC_OK)
        status = weight_grad ? lc_weight_grad(&j, k, threads)
                             : lc_run(&j, k->forward, j.P, k->patch_scratch(&j), threads);
    free(block);
    return status;
}

LC_EXPORT int unshared_forward(const lc_call *c, int dtype, int isa, int threads)
{
    return lc_patch_op(c, dtype, isa, threads, 0);
}

LC_EXPORT int unshared_weight_grad(const lc_call *c, int dtype, int isa, int threads)
{
    return lc_patch_op(c, dtype, isa, threads, 1);
}

/* Whether the input grad of channel-major filters runs as a scatter (kernels_ig_scatter.h), and its
 * items: blocks of channels whose filter runs are at least 256 elements (fewer channels when that
 * leaves fewer than two items per thread), and of samples, halved while an item's gxt would pass
 * 8 MiB. Not for kernel-major filters (the gather reads them as runs already), nor where gxt
 * stays above 64 MiB at one channel and one vector of samples. */
static int lc_scatter_plan(lc_job *j, int64_t lanes, size_t item, int threads)
{
    const lc_call *c = &j->c;
    if (c->kernel_major) return 0;
    int64_t inputs = c->in[0] * c->in[1] * c->in[2], cb = lc_min(c->cg, (256 + j->K - 1) / j->K), nb = j->npad;
    while (cb > 1 && c->groups * ((c->cg + cb - 1) / cb) < 2 * threads) cb = (cb + 1) / 2;
    while (nb > lanes && (double)cb * inputs * nb * item > 8.0 * (1 << 20)) nb = (nb / 2 + lanes - 1) / lanes * lanes;
    if ((double)inputs * lanes * item > 64.0 * (1 << 20)) return 0;
    j->sc_cb = cb;
    j->sc_nb = nb;
    j->sc_cblocks = (c->cg + cb - 1) / cb;
    j->sc_nblocks = (j->npad + nb - 1) / nb;
    return 1;
}

LC_EXPORT int unshared_input_grad(const lc_call *c, int dtype, int isa, int threads)
{
    const lc_kernels *k = kernels_for(isa, dtype);
    int status = k ? lc_check(c) : LC_BAD_ARGUMENT;
    if (status) return status;
    if (lc_rows_path(c, k, LC_OP_INPUT_GRAD)) return lc_input_grad_rows(c, k, threads);
    if (k->half && c->n <= k->half->lanes) k = k->half;
    lc_job j;
    lc_job_init(&j, c);
    j.npad = (c->n + k->lanes - 1) / k->lanes * k->lanes;
    size_t item = dtype == LC_FLOAT32 ? sizeof(float) : sizeof(double);
    void *block;
    j.gyt = lc_alloc_lines((size_t)(j.P * j.O * j.npad) * item, &block);
    if (!j.gyt) return LC_NO_MEMORY;
    status = lc_run(&j, k->transpose_gy, j.P, 0, threads);
    if (status == LC_OK && lc_scatter_plan(&j, k->lanes, item, threads))
        status = lc_run(&j, k->input_grad_scatter, c->groups * j.sc_cblocks * j.sc_nblocks, k->ig_scatter_scratch(&j),
                        threads);
    else if (status == LC_OK)
        status = lc_run(&j, k->input_grad, c->in[0] * c->in[1], k->input_grad_scratch(&j), threads);
    free(block);
    return status;
}
