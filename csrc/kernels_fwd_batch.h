/* The forward of channel-major filters with vectors along the batch (kernels.h's first
 * operation): y[n, o, p] = b[o, p] + sum_{c, k} w[p, o, c * K + k] xt[c, i(p, k), n], xt the input
 * with the batch inner (C, inputs + 1, npad; the last row zeros, read for padding), the batch in one
 * vector (npad == VL). Each filter is read once,
 * in order, as broadcasts: no transpose to kernel-major (what the channel path needs) and no lanes
 * lost to a short patch run. Items: positions. Included by kernels.h (same T, VB, NAME, V, VL,
 * INLINE, STATIC).
 */

/* xt[c, i, m] = x[m, c, i] (0 for n <= m < npad, and the zero row), for channels begin..end. */
STATIC int NAME(transpose_x)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    (void)scratch;
    const lc_call *c = &jb->c;
    const T *x = (const T *)c->x;
    const int64_t inputs = c->in[0] * c->in[1] * c->in[2], npad = jb->npad;
    for (int64_t ch = begin; ch < end; ch++) {
        T *dst = (T *)jb->xt + ch * (inputs + 1) * npad;
        for (int64_t i = 0; i < inputs; i++, dst += npad) {
            int64_t i3[3];
            lc_unravel(i, c->in, i3);
            const T *src = x + ch * c->xs[1] + i3[0] * c->xs[2] + i3[1] * c->xs[3] + i3[2] * c->xs[4];
            for (int64_t m = 0; m < c->n; m++) dst[m] = src[m * c->xs[0]];
            for (int64_t m = c->n; m < npad; m++) dst[m] = 0;
        }
        for (int64_t m = 0; m < npad; m++) dst[m] = 0;
    }
    return 0;
}

/* Output channels of a tile: no more than 8, whose filter rows are walked by as many pointers
 * (general-purpose registers). */
#define FB_OB (IG_CB1 > 8 ? 8 : IG_CB1)

/* Per thread: the input offset in xt of each kernel offset of a position. */
STATIC size_t NAME(fwd_batch_scratch)(const lc_job *j) { return (size_t)j->K * sizeof(int64_t); }

/* Output channels o0.. (FB_OB of them, `valid` real) of position p, the batch in one vector; the
 * bias added at the store. */
INLINE void NAME(fb_tile)(const lc_job *jb, const T *wo, const T *xg, const int64_t *koff, int64_t valid, T *yp,
                          int64_t o0, int64_t p)
{
    const lc_call *c = &jb->c;
    const int64_t K = jb->K, R = jb->R, cstride = (c->in[0] * c->in[1] * c->in[2] + 1) * VL;
    const T *wr[FB_OB];
    for (int j = 0; j < FB_OB; j++) wr[j] = wo + lc_min(j, valid - 1) * R;
    V acc[FB_OB];
    for (int j = 0; j < FB_OB; j++) acc[j] = NAME(bcast)(0);
    for (int64_t ch = 0; ch < c->cg; ch++) {
        const T *xc = xg + ch * cstride;
        for (int j = 0; j < FB_OB; j++)  /* the filters two channels ahead: short rows, many at once */
            for (int64_t e = 2 * K; e < 3 * K; e += 64 / (int64_t)sizeof(T)) __builtin_prefetch(wr[j] + e);
        for (int64_t k = 0; k < K; k++) {
            V xv = NAME(load)(xc + koff[k]);
            for (int j = 0; j < FB_OB; j++) acc[j] += NAME(bcast)(wr[j][k]) * xv;
        }
        for (int j = 0; j < FB_OB; j++) wr[j] += K;
    }
    for (int j = 0; j < FB_OB; j++) {
        if (j >= valid) continue;
        T lanes[VL];
        NAME(store)(lanes, acc[j] + NAME(bcast)(c->b ? ((const T *)c->b)[lc_bias_at(jb, o0 + j, p)] : 0));
        for (int64_t l = 0; l < c->n; l++) yp[l * c->ys[0] + j * c->ys[1]] = lanes[l];
    }
}

/* Items: positions; the batch fits one vector (npad == VL, the half-width kernels). */
STATIC int NAME(forward_batch)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    const lc_call *c = &jb->c;
    const T *w = (const T *)c->w, *xt = (const T *)jb->xt;
    const int64_t inputs = c->in[0] * c->in[1] * c->in[2], og = c->og;
    int64_t *koff = (int64_t *)scratch;
    for (int64_t p = begin; p < end; p++) {
        int64_t o3[3];
        lc_unravel(p, c->out, o3);
        lc_kernel_inputs(jb, o3, VL, inputs * VL, koff);
        const T *wp = w + (c->bank ? c->bank[p] : p) * jb->O * jb->R;
        T *yp = (T *)c->y + o3[0] * c->ys[2] + o3[1] * c->ys[3] + o3[2] * c->ys[4];
        for (int64_t g = 0; g < c->groups; g++) {
            const T *wg = wp + g * og * jb->R, *xg = xt + g * c->cg * (inputs + 1) * VL;
            for (int64_t o0 = 0; o0 < og; o0 += FB_OB)
                NAME(fb_tile)(jb, wg + o0 * jb->R, xg, koff, lc_min(FB_OB, og - o0), yp + (g * og + o0) * c->ys[1],
                              g * og + o0, p);
        }
    }
    return 0;
}

#undef FB_OB
