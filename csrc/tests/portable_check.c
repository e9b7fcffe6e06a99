/* A C-level check of the portable kernels (issue 41): small random layers, 1d and 2d, through the
 * library's entry points (unshared_forward, unshared_input_grad, unshared_weight_grad) on
 * LC_PORTABLE, against plain nested loops written here. Each case runs in float32 and float64, on
 * every path (the kernels' own choice, the channel path, the rows path), with channel-major and
 * kernel-major filters, on one thread and on three, the forward with a bias (per position or shared,
 * by turns) and the weight gradient with the bias gradient; one line per case and dtype, the largest
 * relative error of each operation; exit status 1 on any mismatch or refused call.
 *
 * Built by tests/test_arm.py, natively and for aarch64 (run under qemu-user), from the library's
 * sources, portable kernels only:
 *   cc -O2 -std=gnu11 -DLC_PORTABLE_ONLY csrc/tests/portable_check.c csrc/dispatch.c \
 *      csrc/cpu_portable.c -pthread -lm -o portable_check
 *
 * Layouts (csrc/unshared_cpu.h): x, y and their gradients are (N, C, d, h, w) with explicit strides
 * (NCDHW or channels-last here); the weight is (banks, O, R) contiguous, R = (Cg, kernel) for
 * channel-major filters (the public layout (*output_size, O, Cg, *kernel_size)) or (kernel, Cg)
 * for kernel-major ones. Padding: the call takes the low side; the high side is implied by the
 * output size (positions past the input read zeros).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unshared_cpu.h"

int unshared_forward(const lc_call *c, int dtype, int isa, int threads);
int unshared_input_grad(const lc_call *c, int dtype, int isa, int threads);
int unshared_weight_grad(const lc_call *c, int dtype, int isa, int threads);

/* One layer: nd spatial dimensions (sizes given for the last nd of (d, h, w)); lo, hi: padding on
 * each side; channels_last: x, y and their gradients channels-last; banks: shared filter banks
 * (bank of position p: p % banks), 0 for one filter per position. */
typedef struct {
    const char *name;
    int nd, n, groups, cg, og;
    int in[2], k[2], s[2], dil[2], lo[2], hi[2];
    int channels_last, banks;
} lc_case;

static const lc_case CASES[] = {
    {"1d plain", 1, 3, 1, 3, 4, {9}, {3}, {1}, {1}, {0}, {0}, 0, 0},
    {"1d stride 2, dilation 2, padding (2, 1)", 1, 2, 1, 2, 3, {13}, {3}, {2}, {2}, {2}, {1}, 0, 0},
    {"1d causal (4, 0), groups 2, one channel per group", 1, 5, 2, 1, 2, {20}, {5}, {1}, {1}, {4}, {0}, 0, 0},
    {"1d long row, stride 3, padding (1, 2), channels-last", 1, 3, 1, 1, 3, {40}, {4}, {3}, {1}, {1}, {2}, 1, 0},
    {"2d plain, padding 1", 2, 2, 1, 3, 2, {5, 6}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 0, 0},
    {"2d stride (2, 1), dilation (1, 2), padding ((0, 1), (2, 0)), groups 3, channels-last", 2, 2, 3, 2, 2,
     {7, 9}, {2, 3}, {2, 1}, {1, 2}, {0, 2}, {1, 0}, 1, 0},
    {"2d batch 1, stride 2, 5 channels", 2, 1, 1, 5, 3, {4, 4}, {2, 2}, {2, 2}, {1, 1}, {1, 1}, {1, 1}, 0, 0},
    {"2d kernel past the input, padding ((2, 0), (0, 2)), groups 2", 2, 2, 2, 1, 2, {3, 3}, {5, 5}, {1, 1},
     {1, 1}, {2, 0}, {0, 2}, 0, 0},
    {"2d three shared banks, padding 1", 2, 4, 1, 2, 3, {6, 6}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 0, 3},
};
#define NCASES ((int)(sizeof(CASES) / sizeof(CASES[0])))

static const char *PATHS[] = {"auto", "channels", "rows"};

/* ------------------------------------------------------------------------------- helpers */

static uint64_t lc_state = 0x9E3779B97F4A7C15ull;

static double uniform(void)  /* in [-1, 1), xorshift64* */
{
    lc_state ^= lc_state >> 12;
    lc_state ^= lc_state << 25;
    lc_state ^= lc_state >> 27;
    return (double)((lc_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static void *buffer(int64_t count, int dtype)
{
    void *p = malloc((size_t)(count ? count : 1) * (dtype == LC_FLOAT32 ? sizeof(float) : sizeof(double)));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static double get(const void *p, int dtype, int64_t i)
{
    return dtype == LC_FLOAT32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

static void put(void *p, int dtype, int64_t i, double v)
{
    if (dtype == LC_FLOAT32) ((float *)p)[i] = (float)v;
    else ((double *)p)[i] = v;
}

/* Random values, rounded to the dtype (the reference then sees what the kernels see). */
static double *random_values(int64_t count, int dtype)
{
    double *v = malloc((size_t)(count ? count : 1) * sizeof(double));
    if (!v) exit(2);
    for (int64_t i = 0; i < count; i++) v[i] = dtype == LC_FLOAT32 ? (double)(float)uniform() : uniform();
    return v;
}

/* max |got - want| / max |want| */
static double relative_error(const double *want, const void *got, int dtype, int64_t count)
{
    double err = 0, scale = 0;
    for (int64_t i = 0; i < count; i++) {
        double d = fabs(get(got, dtype, i) - want[i]);
        if (!(d <= err)) err = d;  /* (NaN: kept) */
        if (fabs(want[i]) > scale) scale = fabs(want[i]);
    }
    return err / (scale > 0 ? scale : 1);
}

/* ------------------------------------------------------------------------------- one case */

typedef struct {
    int64_t n, C, O, cg, og, groups, P, K, banks;
    int64_t in[3], out[3], k[3], s[3], dil[3], pad[3];
    int64_t *bank;  /* NULL: a filter per position */
} lc_shape;

static lc_shape shape_of(const lc_case *t)
{
    lc_shape g = {.n = t->n, .groups = t->groups, .cg = t->cg, .og = t->og};
    g.C = g.groups * g.cg;
    g.O = g.groups * g.og;
    g.P = g.K = 1;
    for (int d = 0; d < 3; d++) {
        int e = d - (3 - t->nd);  /* index into the case's sizes; < 0: a leading dimension of size 1 */
        g.in[d] = e < 0 ? 1 : t->in[e];
        g.k[d] = e < 0 ? 1 : t->k[e];
        g.s[d] = e < 0 ? 1 : t->s[e];
        g.dil[d] = e < 0 ? 1 : t->dil[e];
        g.pad[d] = e < 0 ? 0 : t->lo[e];
        int64_t hi = e < 0 ? 0 : t->hi[e];
        g.out[d] = (g.in[d] + g.pad[d] + hi - g.dil[d] * (g.k[d] - 1) - 1) / g.s[d] + 1;
        g.P *= g.out[d];
        g.K *= g.k[d];
    }
    g.banks = t->banks ? t->banks : g.P;
    g.bank = NULL;
    if (t->banks) {
        g.bank = malloc((size_t)g.P * sizeof(int64_t));
        if (!g.bank) exit(2);
        for (int64_t p = 0; p < g.P; p++) g.bank[p] = p % t->banks;
    }
    return g;
}

/* Strides (n, c, d, h, w) of an (N, C, *size) tensor, NCDHW or channels-last. */
static void strides(int64_t C, const int64_t size[3], int channels_last, int64_t st[5])
{
    int64_t v = size[0] * size[1] * size[2];
    if (channels_last) {
        st[0] = v * C, st[1] = 1, st[4] = C, st[3] = C * size[2], st[2] = st[3] * size[1];
    } else {
        st[0] = v * C, st[1] = v, st[4] = 1, st[3] = size[2], st[2] = size[1] * size[2];
    }
}

static int64_t at(const int64_t st[5], int64_t n, int64_t c, int64_t d, int64_t h, int64_t w)
{
    return n * st[0] + c * st[1] + d * st[2] + h * st[3] + w * st[4];
}

/* The public weight index (bank, o, c, k) and the one the call reads (channel- or kernel-major). */
static int64_t w_public(const lc_shape *g, int64_t b, int64_t o, int64_t c, int64_t k)
{
    return ((b * g->O + o) * g->cg + c) * g->K + k;
}

static int64_t w_storage(const lc_shape *g, int kernel_major, int64_t b, int64_t o, int64_t c, int64_t k)
{
    return kernel_major ? ((b * g->O + o) * g->K + k) * g->cg + c : w_public(g, b, o, c, k);
}

/* The reference, in plain loops: every (sample, position, output channel, input channel, kernel
 * offset) adds its product to y, gx and gw alike. */
static void reference(const lc_shape *g, const int64_t xs[5], const int64_t ys[5], const double *x,
                      const double *w, const double *gy, double *y, double *gx, double *gw)
{
    int64_t xn = g->n * g->C * g->in[0] * g->in[1] * g->in[2], yn = g->n * g->O * g->P;
    memset(y, 0, (size_t)yn * sizeof(double));
    memset(gx, 0, (size_t)xn * sizeof(double));
    memset(gw, 0, (size_t)(g->banks * g->O * g->cg * g->K) * sizeof(double));
    for (int64_t m = 0; m < g->n; m++)
        for (int64_t p = 0; p < g->P; p++) {
            int64_t od = p / (g->out[1] * g->out[2]), oh = p / g->out[2] % g->out[1], ow = p % g->out[2];
            int64_t b = g->bank ? g->bank[p] : p;
            for (int64_t o = 0; o < g->O; o++) {
                int64_t yi = at(ys, m, o, od, oh, ow), grp = o / g->og;
                for (int64_t c = 0; c < g->cg; c++)
                    for (int64_t kd = 0; kd < g->k[0]; kd++)
                        for (int64_t kh = 0; kh < g->k[1]; kh++)
                            for (int64_t kw = 0; kw < g->k[2]; kw++) {
                                int64_t id = od * g->s[0] - g->pad[0] + kd * g->dil[0];
                                int64_t ih = oh * g->s[1] - g->pad[1] + kh * g->dil[1];
                                int64_t iw = ow * g->s[2] - g->pad[2] + kw * g->dil[2];
                                if (id < 0 || id >= g->in[0] || ih < 0 || ih >= g->in[1] || iw < 0 || iw >= g->in[2])
                                    continue;  /* padding: zeros */
                                int64_t xi = at(xs, m, grp * g->cg + c, id, ih, iw);
                                int64_t wi = w_public(g, b, o, c, (kd * g->k[1] + kh) * g->k[2] + kw);
                                y[yi] += w[wi] * x[xi];
                                gx[xi] += w[wi] * gy[yi];
                                gw[wi] += gy[yi] * x[xi];
                            }
            }
        }
}

/* One case in one dtype, every variant; returns the number of failures. */
static int run_case(const lc_case *t, int dtype)
{
    lc_shape g = shape_of(t);
    int64_t xs[5], ys[5], xn = g.n * g.C * g.in[0] * g.in[1] * g.in[2], yn = g.n * g.O * g.P;
    int64_t wn = g.banks * g.O * g.cg * g.K;
    strides(g.C, g.in, t->channels_last, xs);
    strides(g.O, g.out, t->channels_last, ys);
    double *x = random_values(xn, dtype), *w = random_values(wn, dtype), *gy = random_values(yn, dtype);
    double *y = malloc((size_t)yn * sizeof(double)), *gx = malloc((size_t)xn * sizeof(double));
    double *gw = malloc((size_t)wn * sizeof(double)), *got_w = malloc((size_t)wn * sizeof(double));
    double *bias = random_values(g.O * g.P, dtype), *yb = malloc((size_t)yn * sizeof(double));
    double *gb = calloc((size_t)(g.O * g.P), sizeof(double));
    if (!y || !gx || !gw || !got_w || !yb || !gb) exit(2);
    reference(&g, xs, ys, x, w, gy, y, gx, gw);
    for (int64_t m = 0; m < g.n; m++)  /* the bias gradient: gy summed over the batch */
        for (int64_t o = 0; o < g.O; o++)
            for (int64_t p = 0; p < g.P; p++)
                gb[o * g.P + p] += gy[at(ys, m, o, p / (g.out[1] * g.out[2]), p / g.out[2] % g.out[1], p % g.out[2])];
    void *bx = buffer(xn, dtype), *bgy = buffer(yn, dtype), *bw = buffer(wn, dtype);
    void *by = buffer(yn, dtype), *bgx = buffer(xn, dtype), *bgw = buffer(wn, dtype);
    void *bb = buffer(g.O * g.P, dtype), *bgb = buffer(g.O * g.P, dtype);
    for (int64_t i = 0; i < g.O * g.P; i++) put(bb, dtype, i, bias[i]);
    for (int64_t i = 0; i < xn; i++) put(bx, dtype, i, x[i]);
    for (int64_t i = 0; i < yn; i++) put(bgy, dtype, i, gy[i]);
    const double tol = dtype == LC_FLOAT32 ? 1e-4 : 1e-10;
    double worst[4] = {0, 0, 0, 0};
    int failures = 0, variant = 0;
    for (int path = LC_PATH_AUTO; path <= LC_PATH_ROWS; path++)
        for (int kernel_major = 0; kernel_major < 2; kernel_major++, variant++) {
            int threads = 1 + 2 * (variant % 2), shared = (variant + variant / 2) % 2;  /* both biases on each path */
            for (int64_t m = 0; m < g.n; m++)
                for (int64_t o = 0; o < g.O; o++)
                    for (int64_t p = 0; p < g.P; p++) {
                        int64_t yi = at(ys, m, o, p / (g.out[1] * g.out[2]), p / g.out[2] % g.out[1], p % g.out[2]);
                        yb[yi] = y[yi] + bias[shared ? o : o * g.P + p];
                    }
            for (int64_t b = 0; b < g.banks; b++)
                for (int64_t o = 0; o < g.O; o++)
                    for (int64_t c = 0; c < g.cg; c++)
                        for (int64_t k = 0; k < g.K; k++)
                            put(bw, dtype, w_storage(&g, kernel_major, b, o, c, k), w[w_public(&g, b, o, c, k)]);
            lc_call call = {g.n, g.groups, g.cg, g.og, {0}, {0}, {0}, {0}, {0}, {0}, NULL, {0}, NULL, {0}, NULL,
                            kernel_major, g.bank, g.banks, xn, yn, wn, g.bank ? g.P : 0, path, NULL, 0, 0};
            for (int d = 0; d < 3; d++) {
                call.in[d] = g.in[d], call.out[d] = g.out[d], call.k[d] = g.k[d];
                call.s[d] = g.s[d], call.pad[d] = g.pad[d], call.dil[d] = g.dil[d];
            }
            memcpy(call.xs, xs, sizeof(xs));
            memcpy(call.ys, ys, sizeof(ys));
            /* what the kernels write is filled with garbage first: every element must be written */
            for (int64_t i = 0; i < yn; i++) put(by, dtype, i, 1e30);
            for (int64_t i = 0; i < xn; i++) put(bgx, dtype, i, 1e30);
            for (int64_t i = 0; i < wn; i++) put(bgw, dtype, i, 1e30);
            for (int64_t i = 0; i < g.O * g.P; i++) put(bgb, dtype, i, 1e30);
            int status[4];
            call.x = bx, call.y = by, call.w = bw, call.b = bb, call.b_shared = shared;
            call.b_extent = shared ? g.O : g.O * g.P;
            status[0] = unshared_forward(&call, dtype, LC_PORTABLE, threads);
            call.x = bgx, call.y = bgy, call.w = bw, call.b = NULL;
            status[1] = unshared_input_grad(&call, dtype, LC_PORTABLE, threads);
            call.x = bx, call.y = bgy, call.w = bgw, call.b = bgb, call.b_shared = 0, call.b_extent = g.O * g.P;
            status[2] = status[3] = unshared_weight_grad(&call, dtype, LC_PORTABLE, threads);
            for (int64_t b = 0; b < g.banks; b++)
                for (int64_t o = 0; o < g.O; o++)
                    for (int64_t c = 0; c < g.cg; c++)
                        for (int64_t k = 0; k < g.K; k++)
                            got_w[w_public(&g, b, o, c, k)] = get(bgw, dtype, w_storage(&g, kernel_major, b, o, c, k));
            double err[4] = {relative_error(yb, by, dtype, yn), relative_error(gx, bgx, dtype, xn),
                             relative_error(gw, got_w, LC_FLOAT64, wn), relative_error(gb, bgb, dtype, g.O * g.P)};
            static const char *OPS[4] = {"forward", "input_grad", "weight_grad", "bias_grad"};
            for (int op = 0; op < 4; op++) {
                if (!(err[op] <= worst[op])) worst[op] = err[op];
                if (status[op] != LC_OK || !(err[op] <= tol)) {
                    failures++;
                    printf("FAIL %s, %s, path %s, %s filters, %d threads: %s status %d, relative error %.3g\n",
                           t->name, dtype == LC_FLOAT32 ? "float32" : "float64", PATHS[path],
                           kernel_major ? "kernel-major" : "channel-major", threads, OPS[op], status[op], err[op]);
                }
            }
        }
    printf("%s %-8s %s: forward %.2g, input_grad %.2g, weight_grad %.2g, bias_grad %.2g (relative; tolerance %g)\n",
           failures ? "FAIL" : "ok  ", dtype == LC_FLOAT32 ? "float32" : "float64", t->name, worst[0], worst[1],
           worst[2], worst[3], tol);
    free(x), free(w), free(gy), free(y), free(gx), free(gw), free(got_w), free(g.bank), free(bias), free(yb), free(gb);
    free(bx), free(bgy), free(bw), free(by), free(bgx), free(bgw), free(bb), free(bgb);
    return failures;
}

int main(void)
{
    if (!unshared_isa_supported(LC_PORTABLE)) {
        printf("FAIL the portable kernels report themselves unsupported\n");
        return 1;
    }
    int failures = 0;
    for (int i = 0; i < NCASES; i++)
        for (int dtype = LC_FLOAT32; dtype <= LC_FLOAT64; dtype++) failures += run_case(&CASES[i], dtype);
    printf("%s: %d cases x 2 dtypes x 3 paths x 2 filter layouts, %d failures\n",
           failures ? "FAILED" : "passed", NCASES, failures);
    return failures ? 1 : 0;
}
