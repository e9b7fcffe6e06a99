/* The compiled CPU kernels of unshared's "cpu" backend: the interface (called through ctypes).
 *
 * A call is described as 3-d: 1d and 2d layers have leading spatial sizes 1 (stride 0). Every
 * size and stride is an int64 count of elements. The entry points trust no caller: before any
 * kernel runs they check every size, that the largest offset each kernel computes in x, y, w and
 * the bias stays inside the extent given for it, that every bank index is in range and that no
 * coordinate or buffer size overflows (dispatch.c: lc_check), and refuse the call with a status
 * otherwise.
 */
#ifndef UNSHARED_CPU_H
#define UNSHARED_CPU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { LC_FLOAT32 = 0, LC_FLOAT64 = 1 };
enum { LC_PORTABLE = 0, LC_AVX2 = 1, LC_AVX512 = 2, LC_ISAS = 3 };
/* Statuses: a refused call (2 and up) computes nothing. */
enum { LC_OK = 0, LC_NO_MEMORY = 1, LC_BAD_ARGUMENT = 2, LC_BAD_X = 3, LC_BAD_Y = 4, LC_BAD_W = 5,
       LC_BAD_BANK = 6, LC_TOO_LARGE = 7, LC_BAD_BIAS = 8 };

/* One locally connected call (mirrored by a ctypes.Structure in unshared/backends/cpu.py). */
typedef struct {
    int64_t n, groups, cg, og;        /* batch, groups, in and out channels per group */
    int64_t in[3], out[3], k[3];      /* input, output and kernel sizes (d, h, w) */
    int64_t s[3], pad[3], dil[3];     /* stride, low-side zero padding, dilation */
    void *x;  int64_t xs[5];          /* input or its gradient (N, C, d, h, w), strides */
    void *y;  int64_t ys[5];          /* output or its gradient (N, O, d, h, w), strides */
    void *w;                          /* weight or its gradient: (banks, O, R) contiguous */
    int64_t kernel_major;             /* R ordered (kernel, Cg) if 1, (Cg, kernel) if 0 */
    const int64_t *bank;              /* (positions,) bank of each output position; NULL: itself */
    int64_t banks;                    /* filter banks in w */
    int64_t x_extent, y_extent;       /* elements of x's and y's memory from their pointers on */
    int64_t w_extent, bank_len;       /* the same for w; entries of bank (0 without it) */
    int64_t path;                     /* LC_PATH_*: the kernels' choice by shape, or one forced */
    void *b;                          /* forward: the bias added to y; weight grad: the bias gradient
                                         (O, *out) contiguous written beside gw; NULL: none (the
                                         input grad ignores it) */
    int64_t b_shared;                 /* forward: b is (O,), shared by the positions; else (O, *out) */
    int64_t b_extent;                 /* elements of b's memory from its pointer on */
} lc_call;

/* Paths of forward and weight grad: vectors along the channels of a patch, or along the output
 * positions of a row (few channels; kernels_rows.h). */
enum { LC_PATH_AUTO = 0, LC_PATH_CHANNELS = 1, LC_PATH_ROWS = 2 };

/* ---- internal: shared by the ISA translation units and the dispatcher ---- */

typedef struct { int64_t x, w, len; } lc_seg;     /* a run contiguous in the patch and in w */
typedef struct { int64_t gy, w; } lc_pair;        /* input grad: (position, kernel offset) */
typedef struct { int64_t x, iw, ok, w; } lc_tap;  /* rows path: one patch element of a row */
typedef struct { int64_t gy, prow, q, k; } lc_itap; /* rows input grad: (output row, kernel offset) */

typedef struct {
    lc_call c;                        /* x: channel stride 1 (a channels-last copy if needed) */
    int64_t K, R, P, O;               /* kernel volume, R = K * Cg, positions, out channels */
    int64_t merged;                   /* a kernel row's (kw, c) is one run in x */
    int64_t npad;                     /* input grad, batch forward: the batch of gyt or xt, padded to the lanes */
    void *gyt;                        /* input grad: (P, O, npad) output gradient, batch inner */
    void *xt;                         /* forward, batch path: (C, inputs + 1, npad) input, batch inner */
    const int64_t *order, *start;     /* weight grad with banks: positions by bank (CSR) */
    int64_t tiles;                    /* rows input grad: tiles of VL positions per phase of a row */
    int64_t sc_cb, sc_nb;             /* scatter input grad: channels and samples of an item */
    int64_t sc_cblocks, sc_nblocks;   /* and the blocks of a group's channels and of npad */
    const void *source;               /* x given with another channel stride, and its strides */
    int64_t ss[5];
    int64_t split, split_len, split_w; /* rows path: x's copy with the phases of stride `split` along w
                                          apart, rows of split_len per phase, from rows split_w long */
} lc_job;

typedef int (*lc_range_fn)(const lc_job *job, int64_t begin, int64_t end, void *scratch);

/* The kernels of one ISA, dtype and vector width; `half`: the same at half the width (the input
 * gradient and the batch forward of batches that fit it), or NULL. */
typedef struct lc_kernels {
    lc_range_fn forward, weight_grad, input_grad, transpose_gy, forward_rows, weight_grad_rows, input_grad_rows,
        input_grad_scatter, forward_batch, transpose_x;
    size_t (*patch_scratch)(const lc_job *job);   /* per thread, forward and weight grad */
    size_t (*rows_scratch)(const lc_job *job);    /* per thread, the rows path */
    size_t (*input_grad_rows_scratch)(const lc_job *job);
    size_t (*ig_scatter_scratch)(const lc_job *job);
    size_t (*input_grad_scratch)(const lc_job *job);  /* per thread, the gather input grad */
    size_t (*fwd_batch_scratch)(const lc_job *job);
    int64_t lanes;
    const struct lc_kernels *half;
} lc_kernels;

extern const lc_kernels kernels_portable_f32, kernels_portable_f64;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(LC_PORTABLE_ONLY)
#define LC_X86 1
extern const lc_kernels kernels_avx2_f32, kernels_avx2_f64, kernels_avx512_f32, kernels_avx512_f64;
#endif

/* 1 when this CPU runs `isa` (dispatch.c). */
int unshared_isa_supported(int isa);
/* The FMA microbenchmark (peak.c): LC_PEAK_CHAINS chains of vector multiply-adds per thread,
 * `iterations` steps; the checksum of their final values and the flops done. */
int unshared_fma_peak(int isa, int dtype, int threads, int64_t iterations, double *checksum, int64_t *flops);

static inline int64_t lc_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t lc_max(int64_t a, int64_t b) { return a > b ? a : b; }
/* p rounded up to a multiple of `align` bytes (a power of two) */
static inline void *lc_align_up(void *p, size_t align) { return (void *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1)); }

/* The runs of output position o's patch (forward and weight grad); returns their number and
 * sets *covered to the patch elements inside the input (R when nothing is padding). */
static inline int64_t lc_segments(const lc_job *j, const int64_t o[3], lc_seg *seg, int64_t *covered)
{
    const lc_call *c = &j->c;
    int64_t base[3], count = 0, total = 0;
    for (int d = 0; d < 3; d++) base[d] = o[d] * c->s[d] - c->pad[d];
    for (int64_t kd = 0; kd < c->k[0]; kd++) {
        int64_t id = base[0] + kd * c->dil[0];
        if (id < 0 || id >= c->in[0]) continue;
        for (int64_t kh = 0; kh < c->k[1]; kh++) {
            int64_t ih = base[1] + kh * c->dil[1];
            if (ih < 0 || ih >= c->in[1]) continue;
            int64_t row_x = id * c->xs[2] + ih * c->xs[3], row_k = (kd * c->k[1] + kh) * c->k[2];
            if (j->merged) {  /* dilation 1 along w: one run of (kw1 - kw0) * Cg elements */
                int64_t kw0 = lc_max(0, -base[2]), kw1 = lc_min(c->k[2], c->in[2] - base[2]);
                if (kw1 <= kw0) continue;
                seg[count++] = (lc_seg){row_x + (base[2] + kw0) * c->xs[4], (row_k + kw0) * c->cg,
                                        (kw1 - kw0) * c->cg};
                total += (kw1 - kw0) * c->cg;
                continue;
            }
            for (int64_t kw = 0; kw < c->k[2]; kw++) {
                int64_t iw = base[2] + kw * c->dil[2];
                if (iw < 0 || iw >= c->in[2]) continue;
                seg[count++] = (lc_seg){row_x + iw * c->xs[4], (row_k + kw) * c->cg, c->cg};
                total += c->cg;
            }
        }
    }
    *covered = total;
    return count;
}

/* The (position, kernel offset) pairs whose patch holds input position i (input grad). */
static inline int64_t lc_pairs(const lc_job *j, const int64_t i[3], lc_pair *pairs)
{
    const lc_call *c = &j->c;
    int64_t count = 0;
    for (int64_t kd = 0; kd < c->k[0]; kd++) {
        int64_t td = i[0] + c->pad[0] - kd * c->dil[0];
        if (td < 0 || td % c->s[0] || td / c->s[0] >= c->out[0]) continue;
        for (int64_t kh = 0; kh < c->k[1]; kh++) {
            int64_t th = i[1] + c->pad[1] - kh * c->dil[1];
            if (th < 0 || th % c->s[1] || th / c->s[1] >= c->out[1]) continue;
            for (int64_t kw = 0; kw < c->k[2]; kw++) {
                int64_t tw = i[2] + c->pad[2] - kw * c->dil[2];
                if (tw < 0 || tw % c->s[2] || tw / c->s[2] >= c->out[2]) continue;
                int64_t p = ((td / c->s[0]) * c->out[1] + th / c->s[1]) * c->out[2] + tw / c->s[2];
                int64_t k = (kd * c->k[1] + kh) * c->k[2] + kw;
                int64_t bank = c->bank ? c->bank[p] : p;
                pairs[count++] = (lc_pair){p * j->O * j->npad,
                                           bank * j->O * j->R + (c->kernel_major ? k * c->cg : k)};
            }
        }
    }
    return count;
}

/* The rows path's patch elements of output row `row` (d, h), channel-major (r = c * K + k): the
 * offset of their input row from a sample's group origin, the w-coordinate of lane 0 at position
 * 0, whether their input row lies inside the input (not padding), their offset in a filter. */
static inline void lc_taps(const lc_job *j, int64_t row, lc_tap *tap)
{
    const lc_call *c = &j->c;
    int64_t od = row / c->out[1], oh = row % c->out[1], r = 0;
    for (int64_t ch = 0; ch < c->cg; ch++)
        for (int64_t kd = 0; kd < c->k[0]; kd++) {
            int64_t id = od * c->s[0] - c->pad[0] + kd * c->dil[0];
            for (int64_t kh = 0; kh < c->k[1]; kh++) {
                int64_t ih = oh * c->s[1] - c->pad[1] + kh * c->dil[1];
                int64_t ok = id >= 0 && id < c->in[0] && ih >= 0 && ih < c->in[1];
                for (int64_t kw = 0; kw < c->k[2]; kw++, r++) {
                    int64_t k = (kd * c->k[1] + kh) * c->k[2] + kw, iw = kw * c->dil[2] - c->pad[2], ph = 0;
                    if (j->split > 1) {  /* phases apart: phase ph's row, at position (iw - ph) / split */
                        ph = (iw % j->split + j->split) % j->split;
                        iw = (iw - ph) / j->split;
                    }
                    tap[r] = (lc_tap){ok ? ch * c->xs[1] + id * c->xs[2] + ih * c->xs[3] + ph * j->split_len : 0,
                                      iw, ok, c->kernel_major ? k * c->cg + ch : ch * j->K + k};
                }
            }
        }
}

/* a mod s and floor(a / s), for s > 0 and any a */
static inline int64_t lc_mod(int64_t a, int64_t s) { return (a % s + s) % s; }

/* The taps of the rows input gradient that reach input row `row` (d, h) at w-coordinates
 * phase + s * m: the output row of each kernel offset whose (d, h) lands on it, and q with
 * p = q + m the output position along w (none where the kernel offset's w never lands there). */
static inline int64_t lc_itaps(const lc_job *j, int64_t row, int64_t phase, lc_itap *tap)
{
    const lc_call *c = &j->c;
    int64_t id = row / c->in[1], ih = row % c->in[1], count = 0;
    for (int64_t kd = 0; kd < c->k[0]; kd++) {
        int64_t td = id + c->pad[0] - kd * c->dil[0];
        if (td < 0 || td % c->s[0] || td / c->s[0] >= c->out[0]) continue;
        for (int64_t kh = 0; kh < c->k[1]; kh++) {
            int64_t th = ih + c->pad[1] - kh * c->dil[1];
            if (th < 0 || th % c->s[1] || th / c->s[1] >= c->out[1]) continue;
            int64_t orow = td / c->s[0] * c->out[1] + th / c->s[1];
            for (int64_t kw = 0; kw < c->k[2]; kw++) {
                int64_t tw = phase + c->pad[2] - kw * c->dil[2];
                if (lc_mod(tw, c->s[2])) continue;
                tap[count++] = (lc_itap){td / c->s[0] * c->ys[2] + th / c->s[1] * c->ys[3], orow * c->out[2],
                                         (tw - lc_mod(tw, c->s[2])) / c->s[2], (kd * c->k[1] + kh) * c->k[2] + kw};
            }
        }
    }
    return count;
}

/* For each kernel offset k of output position o: its input position's index times `scale`, or
 * `outside` where it falls on padding (forward with the batch inner, scatter input grad). */
static inline void lc_kernel_inputs(const lc_job *j, const int64_t o[3], int64_t scale, int64_t outside, int64_t *off)
{
    const lc_call *c = &j->c;
    int64_t k = 0;
    for (int64_t kd = 0; kd < c->k[0]; kd++) {
        int64_t id = o[0] * c->s[0] - c->pad[0] + kd * c->dil[0];
        for (int64_t kh = 0; kh < c->k[1]; kh++) {
            int64_t ih = o[1] * c->s[1] - c->pad[1] + kh * c->dil[1];
            for (int64_t kw = 0; kw < c->k[2]; kw++, k++) {
                int64_t iw = o[2] * c->s[2] - c->pad[2] + kw * c->dil[2];
                int inside = id >= 0 && id < c->in[0] && ih >= 0 && ih < c->in[1] && iw >= 0 && iw < c->in[2];
                off[k] = inside ? ((id * c->in[1] + ih) * c->in[2] + iw) * scale : outside;
            }
        }
    }
}

/* The offset of output channel o at position p in the bias (or its gradient): (O,) or (O, P). */
static inline int64_t lc_bias_at(const lc_job *j, int64_t o, int64_t p) { return j->c.b_shared ? o : o * j->P + p; }

static inline void lc_unravel(int64_t p, const int64_t size[3], int64_t o[3])
{
    o[2] = p % size[2];
    o[1] = (p / size[2]) % size[1];
    o[0] = p / (size[2] * size[1]);
}

#endif
