/* The rows path of forward and weight grad: vectors along the output positions of a row (the last
 * spatial dimension), for inputs with few channels, where vectors along the channels would hold
 * one or a few elements. Included by kernels.h (same T, VB, NAME, V, VL, INLINE, STATIC).
 *
 * A tile is VL consecutive output positions of one row (d, h); a span, up to ROWS_SPAN_MAX
 * consecutive tiles of one row among a thread's items. Per span and block of ROWS_OB output
 * channels, each tile's filters (VL, OB, R) are transposed into scratch as (OB, R, VL) (filter
 * order), so that lane l of every vector is position t0 + l:
 * forward:      y[n, o, t0 + l] += wt[o, r, l] * x[n, patch(t0 + l, r)], a ROWS_NB x OB tile of
 *               (sample, output channel) vectors, the bias added at the store;
 * weight grad:  gt[o, r, l] = sum_n gy[n, o, t0 + l] * x[n, patch(t0 + l, r)], an OB x ROWS_RB tile
 *               of (output channel, patch element) vectors, transposed back into the gradient.
 * The span's tiles are taken one after the other for each block of samples, so that each sample's
 * rows are read (and y's written) as a few long streams, not as one line of each of many rows.
 * The input's lanes along w step by stride * x's w-stride: a plain vector load when that is 1 and
 * the lanes lie inside the input, else a gather with zeros outside (padding).
 */

/* Elements ahead that the loads of a tile prefetch along a row (8 cache lines). */
#define ROWS_AHEAD (512 / (int64_t)sizeof(T))

/* Tiles of a span: as many as keep its transposed filters within ROWS_SPAN_BYTES (at least one). */
#define ROWS_SPAN_MAX 16
#define ROWS_SPAN_BYTES ((int64_t)128 << 10)
INLINE int64_t NAME(rows_span)(const lc_job *j)
{
    return lc_max(1, lc_min(ROWS_SPAN_MAX, ROWS_SPAN_BYTES / (ROWS_OB * j->R * VL * (int64_t)sizeof(T))));
}

/* Samples of a block of the weight grad: its accumulators go through scratch between blocks, which
 * at 8 samples cost more than the longer streams of each sample's rows saved (1d, 1 -> 1 channel,
 * batch 32: 1.44 -> 1.12 ms at 32; batch 128: 2.75 -> 1.85 ms at 128 and more). */
#define ROWS_MB 128

/* Per-thread scratch: the row's taps and one span's transposed filters of a block. */
STATIC size_t NAME(rows_scratch)(const lc_job *j)
{
    return (size_t)j->R * sizeof(lc_tap) + (size_t)(NAME(rows_span)(j) * ROWS_OB * j->R * VL + VL) * sizeof(T);
}

/* Lanes l < nv of x at w-coordinates i0 + l * s into v (zeros outside 0..limit and past nv): the
 * slow case, out of line so that the tiles' loops stay small enough to unroll. */
static __attribute__((noinline)) LC_ATTR void NAME(rows_gather)(T *v, const T *row, int64_t i0, int64_t s,
                                                                int64_t es, int64_t limit, int64_t nv)
{
    for (int64_t l = 0; l < VL; l++) {
        int64_t i = i0 + l * s;
        v[l] = l < nv && i >= 0 && i < limit ? row[i * es] : 0;
    }
}

/* NB rows' lanes at tap (x offset xo, w-coordinate i0): plain loads when fast, else gathers. */
INLINE void NAME(rows_x)(V *xv, const T *const *xr, int64_t xo, int64_t i0, const lc_call *c,
                         int64_t nv, int fast, const int NB)
{
    if (fast) {
        for (int i = 0; i < NB; i++) xv[i] = NAME(load)(xr[i] + xo + i0);
        return;
    }
    for (int i = 0; i < NB; i++) {
        T lanes[VL];
        NAME(rows_gather)(lanes, xr[i] + xo, i0, c->s[2], c->xs[4], c->in[2], nv);
        xv[i] = NAME(load)(lanes);
    }
}

/* The first nv lanes at p with element stride es (zeros past them); their store. */
INLINE V NAME(rows_load)(const T *p, int64_t es, int64_t nv)
{
    if (es == 1 && nv == VL) return NAME(load)(p);
    V v = NAME(bcast)(0);
    for (int64_t l = 0; l < nv; l++) v[l] = p[l * es];
    return v;
}
INLINE void NAME(rows_store)(T *p, int64_t es, int64_t nv, V v)
{
    if (es == 1 && nv == VL) return NAME(store)(p, v);
    for (int64_t l = 0; l < nv; l++) p[l * es] = v[l];
}

/* Whether the tap at kernel offset kw along w is the first to read its row of x (its phase's row
 * with a stride, taps going along w): where the loads of a tile prefetch the next tiles. */
INLINE int NAME(rows_lead)(const lc_job *jb, int64_t kw) { return kw < lc_max(1, jb->split); }

/* Whether tap r's lanes at tile t0 are one plain vector load. */
INLINE int NAME(rows_fast)(const lc_call *c, int64_t i0, int64_t nv)
{
    return nv == VL && c->s[2] * c->xs[4] == 1 && i0 >= 0 && i0 + VL - 1 < c->in[2];
}

/* dst[l] = w[filter of position p0 + l][e] for l < nv; e: an offset in a position's (O, R)
 * filters. Without banks the lanes are OR apart. */
INLINE void NAME(rows_lanes_of_w)(const lc_job *jb, T *dst, int64_t p0, int64_t nv, int64_t e)
{
    const lc_call *c = &jb->c;
    const T *w = (const T *)c->w;
    const int64_t OR = jb->O * jb->R;
    if (c->bank)
        for (int64_t l = 0; l < nv; l++) dst[l] = w[c->bank[p0 + l] * OR + e];
    else
        for (int64_t l = 0; l < nv; l++) dst[l] = w[(p0 + l) * OR + e];
}

/* Filters of output channels o..o + OB at positions p0..p0 + nv transposed into wt (OB, R, VL) in
 * filter order: a transpose in registers where the positions' filters are VL rows of w, else lane
 * by lane with zeros past nv. Channels past O repeat the last. */
INLINE void NAME(rows_transpose_w)(const lc_job *jb, T *wt, int64_t p0, int64_t nv, int64_t o, const int OB)
{
    const lc_call *c = &jb->c;
    const T *w = (const T *)c->w;
    const int64_t R = jb->R, OR = jb->O * R, ob = lc_min(OB, jb->O - o);
    if (!c->bank && nv == VL)
        NAME(transpose)(w + p0 * OR + o * R, OR, w + c->w_extent, wt, VL, wt + OB * R * VL, VL, ob * R, 0);
    else
        for (int64_t e = 0; e < ob * R; e++) {
            T *dst = wt + e * VL;
            NAME(rows_lanes_of_w)(jb, dst, p0, nv, o * R + e);
            for (int64_t l = nv; l < VL; l++) dst[l] = 0;
        }
    for (int64_t j = ob; j < OB; j++) memcpy(wt + j * R * VL, wt + (ob - 1) * R * VL, (size_t)(R * VL) * sizeof(T));
}

/* The span of items item..: its row (taps recomputed on a new one), first position and tiles. */
INLINE int64_t NAME(rows_span_of)(const lc_job *jb, int64_t item, int64_t end, lc_tap *tap, int64_t *row, int64_t *t0)
{
    const lc_call *c = &jb->c;
    int64_t tiles = (c->out[2] + VL - 1) / VL, r = item / tiles, t = item % tiles;
    if (r != *row) lc_taps(jb, r, tap);
    *row = r;
    *t0 = t * VL;
    return lc_min(NAME(rows_span)(jb), lc_min(end - item, tiles - t));
}

/* ------------------------------------------------------------------------------- forward */

/* Whether every tap of tile t0 that lies inside the input is one plain vector load: the tile's
 * loops then make no call (every vector register is caller-saved: a call in a loop keeps the
 * accumulators in memory). */
INLINE int NAME(rows_tile_fast)(const lc_call *c, const lc_tap *tap, int64_t R, int64_t t0, int64_t nv)
{
    for (int64_t r = 0; r < R; r++)
        if (tap[r].ok && !NAME(rows_fast)(c, t0 * c->s[2] + tap[r].iw, nv)) return 0;
    return 1;
}

/* The bias of output channels o0.. (OB of them, the last repeated past og) at positions p0..p0 + nv,
 * as vectors (zeros without one). */
INLINE void NAME(rows_bias)(const lc_job *jb, V *bv, int64_t p0, int64_t nv, int64_t o0, const int OB)
{
    const lc_call *c = &jb->c;
    const T *b = (const T *)c->b;
    for (int j = 0; j < OB; j++) {
        int64_t o = lc_min(o0 + j, jb->O - 1);
        if (!b) bv[j] = NAME(bcast)(0);
        else if (c->b_shared) bv[j] = NAME(bcast)(b[o]);
        else bv[j] = nv == VL ? NAME(load)(b + o * jb->P + p0) : NAME(load_part)(b + o * jb->P + p0, nv);
    }
}

/* y at the tile's positions p0..p0 + nv (p0 = prow + t0), the bias added at the store. */
INLINE void NAME(rows_fwd_tile)(const lc_job *jb, const lc_tap *tap, const T *wt, int64_t yrow, int64_t prow,
                                int64_t t0, int64_t nv, int64_t n0, int64_t g, int64_t o0, const int NB,
                                const int OB, const int FAST)
{
    const lc_call *c = &jb->c;
    const T *x = (const T *)c->x;
    T *y = (T *)c->y;
    const int64_t R = jb->R, og = c->og, s = c->s[2];
    const T *xn[ROWS_NB1];
    for (int i = 0; i < NB; i++) xn[i] = x + lc_min(n0 + i, c->n - 1) * c->xs[0] + g * c->cg * c->xs[1];
    V acc[ROWS_NB1][ROWS_OB];
    for (int i = 0; i < NB; i++)
        for (int j = 0; j < OB; j++) acc[i][j] = NAME(bcast)(0);
    for (int64_t r = 0, kw = 0; r < R; r++, kw = kw + 1 == c->k[2] ? 0 : kw + 1) {
        if (!tap[r].ok) continue;
        int64_t i0 = t0 * s + tap[r].iw;
        V wv[ROWS_OB], xv[ROWS_NB1];
        for (int j = 0; j < OB; j++) wv[j] = NAME(load)(wt + ((int64_t)j * R + tap[r].w) * VL);
        if (FAST) {
            for (int i = 0; i < NB; i++) xv[i] = NAME(load)(xn[i] + tap[r].x + i0);
            if (NAME(rows_lead)(jb, kw))  /* the next tiles of each sample's rows: many streams at once */
                for (int i = 0; i < NB; i++) __builtin_prefetch(xn[i] + tap[r].x + i0 + ROWS_AHEAD);
        } else {
            NAME(rows_x)(xv, xn, tap[r].x, i0, c, nv, NAME(rows_fast)(c, i0, nv), NB);
        }
        for (int i = 0; i < NB; i++)
            for (int j = 0; j < OB; j++) acc[i][j] += xv[i] * wv[j];
    }
    V bv[ROWS_OB];
    NAME(rows_bias)(jb, bv, prow + t0, FAST ? VL : nv, g * og + o0, OB);
    for (int i = 0; i < NB; i++)
        for (int j = 0; j < OB; j++)
            if (i < c->n - n0 && j < og - o0) {
                T *yp = y + (n0 + i) * c->ys[0] + (g * og + o0 + j) * c->ys[1] + yrow + t0 * c->ys[4];
                if (FAST) {  /* whole vectors (no lane loop: the accumulators stay in registers) */
                    __builtin_prefetch(yp + ROWS_AHEAD, 1);  /* the line a later tile writes */
                    NAME(store)(yp, acc[i][j] + bv[j]);
                } else {
                    NAME(rows_store)(yp, c->ys[4], nv, acc[i][j] + bv[j]);
                }
            }
}

INLINE void NAME(rows_fwd_span)(const lc_job *jb, const lc_tap *tap, T *wt, int64_t row, int64_t t0, int64_t ns,
                                int64_t g, int64_t o0, const int NB, const int OB)
{
    const lc_call *c = &jb->c;
    const int64_t W = c->out[2], block = OB * jb->R * VL;
    int fast[ROWS_SPAN_MAX];
    for (int64_t t = 0; t < ns; t++) {
        int64_t tt = t0 + t * VL, nv = lc_min(VL, W - tt);
        NAME(rows_transpose_w)(jb, wt + t * block, row * W + tt, nv, g * c->og + o0, OB);
        fast[t] = nv == VL && c->ys[4] == 1 && NAME(rows_tile_fast)(c, tap, jb->R, tt, nv);
    }
    int64_t yrow = row / c->out[1] * c->ys[2] + row % c->out[1] * c->ys[3];
    for (int64_t n0 = 0; n0 < c->n; n0 += NB)
        for (int64_t t = 0; t < ns; t++) {
            int64_t tt = t0 + t * VL, nv = lc_min(VL, W - tt);
            if (fast[t]) NAME(rows_fwd_tile)(jb, tap, wt + t * block, yrow, row * W, tt, nv, n0, g, o0, NB, OB, 1);
            else NAME(rows_fwd_tile)(jb, tap, wt + t * block, yrow, row * W, tt, nv, n0, g, o0, NB, OB, 0);
        }
}

STATIC int NAME(forward_rows)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    const lc_call *c = &jb->c;
    lc_tap *tap = (lc_tap *)scratch;
    T *wt = (T *)(tap + jb->R);
    int64_t row = -1, t0;
    for (int64_t item = begin, ns; item < end; item += ns) {
        ns = NAME(rows_span_of)(jb, item, end, tap, &row, &t0);
        for (int64_t g = 0; g < c->groups; g++)
            for (int64_t o0 = 0; o0 < c->og; o0 += c->og >= ROWS_OB ? ROWS_OB : 1) {
                if (c->og >= ROWS_OB) NAME(rows_fwd_span)(jb, tap, wt, row, t0, ns, g, o0, ROWS_NB4, ROWS_OB);
                else NAME(rows_fwd_span)(jb, tap, wt, row, t0, ns, g, o0, ROWS_NB1, 1);
            }
    }
    return 0;
}

/* ---------------------------------------------------------------------------- weight grad */

/* Samples m0..m1 of the tile's OB x RB accumulators at patch elements r0.., added to gt (OB, R,
 * VL; filter order) unless m0 is 0: each sum runs over the samples in order, whatever the blocks. */
INLINE void NAME(rows_wg_tile)(const lc_job *jb, const lc_tap *tap, T *gt, int64_t yrow, int64_t t0, int64_t nv,
                               int64_t g, int64_t o0, int64_t r0, int64_t m0, int64_t m1, const int OB,
                               const int RB, const int FAST)
{
    const lc_call *c = &jb->c;
    const T *x = (const T *)c->x + g * c->cg * c->xs[1], *gy = (const T *)c->y;
    const int64_t R = jb->R, og = c->og, s = c->s[2];
    const T *gyr[ROWS_OB];
    for (int j = 0; j < OB; j++) gyr[j] = gy + (g * og + lc_min(o0 + j, og - 1)) * c->ys[1] + yrow + t0 * c->ys[4];
    int64_t xo[ROWS_RB1], i0[ROWS_RB1], e[ROWS_RB1];
    int fast[ROWS_RB1], ok[ROWS_RB1], nlead = 0;
    int64_t lead[ROWS_RB1];  /* x offsets of the block's taps that start a row */
    for (int q = 0; q < RB; q++) {
        const lc_tap *t = tap + lc_min(r0 + q, R - 1);
        if (r0 + q < R && NAME(rows_lead)(jb, (r0 + q) % c->k[2])) lead[nlead++] = t->x + t0 * s + t->iw;
        xo[q] = t->x;
        i0[q] = t0 * s + t->iw;
        ok[q] = (int)t->ok;
        e[q] = t->w;
        fast[q] = NAME(rows_fast)(c, i0[q], nv);
    }
    V acc[ROWS_OB][ROWS_RB1];
    for (int j = 0; j < OB; j++)
        for (int q = 0; q < RB; q++)
            acc[j][q] = m0 && q < R - r0 ? NAME(load)(gt + ((int64_t)j * R + e[q]) * VL) : NAME(bcast)(0);
    for (int64_t m = m0; m < m1; m++) {
        const T *xm = x + m * c->xs[0];
        V gv[ROWS_OB], xv[ROWS_RB1];
        if (FAST) {  /* the next tiles of each sample's rows: x's at the leading taps */
            for (int k = 0; k < nlead; k++) __builtin_prefetch(xm + lead[k] + ROWS_AHEAD);
            if (r0 == 0)
                for (int j = 0; j < OB; j++) __builtin_prefetch(gyr[j] + m * c->ys[0] + ROWS_AHEAD);
        }
        /* FAST: no lane loop, which a compiler may make a call of (the accumulators stay in registers) */
        for (int j = 0; j < OB; j++)
            gv[j] = FAST ? NAME(load)(gyr[j] + m * c->ys[0]) : NAME(rows_load)(gyr[j] + m * c->ys[0], c->ys[4], nv);
        if (FAST) {
            for (int q = 0; q < RB; q++) xv[q] = NAME(load)(xm + xo[q] + i0[q]);
        } else {
            for (int q = 0; q < RB; q++) {
                const T *xq = xm + xo[q];
                if (ok[q]) NAME(rows_x)(xv + q, &xq, 0, i0[q], c, nv, fast[q], 1);
                else xv[q] = NAME(bcast)(0);
            }
        }
        for (int j = 0; j < OB; j++)
            for (int q = 0; q < RB; q++) acc[j][q] += gv[j] * xv[q];
    }
    for (int j = 0; j < OB; j++)
        for (int q = 0; q < RB; q++)
            if (q < R - r0) NAME(store)(gt + ((int64_t)j * R + e[q]) * VL, acc[j][q]);
}

/* The gradient of output channels o..o + ob at positions p0..p0 + nv from gt (OB, R, VL): a
 * transpose whose whole-vector stores stay inside these positions' filters. */
INLINE void NAME(rows_untranspose)(const lc_job *jb, const T *gt, int64_t p0, int64_t nv, int64_t o, int64_t ob)
{
    T *gw = (T *)jb->c.w;
    const int64_t R = jb->R, OR = jb->O * R;
    NAME(transpose)(gt, VL, gt + ob * R * VL, gw + p0 * OR + o * R, OR, gw + (p0 + nv) * OR, ob * R, nv, 0);
}

/* The bias gradient gb[o, p0 + l] = sum_n gy[n, o, p0 + l] of output channels o0..o0 + ob at a tile's
 * nv positions (gy's lanes at t0 of the row at yrow), summed over the samples in order as the
 * channel path sums them. */
INLINE void NAME(rows_bias_grad)(const lc_job *jb, int64_t yrow, int64_t p0, int64_t t0, int64_t nv, int64_t o0,
                                 int64_t ob)
{
    const lc_call *c = &jb->c;
    T *gb = (T *)c->b;
    for (int64_t o = o0; o < o0 + ob; o++) {
        const T *col = (const T *)c->y + o * c->ys[1] + yrow + t0 * c->ys[4];
        V sum = NAME(bcast)(0);
        for (int64_t m = 0; m < c->n; m++) sum += NAME(rows_load)(col + m * c->ys[0], c->ys[4], nv);
        if (nv == VL) NAME(store)(gb + o * jb->P + p0, sum);
        else NAME(store_part)(gb + o * jb->P + p0, sum, nv);
    }
}

/* A span's tiles, for each block of ROWS_MB samples (each sample's rows read as a few streams);
 * with c.b, then the bias gradient of each tile from the gy its last block read. */
INLINE void NAME(rows_wg_span)(const lc_job *jb, const lc_tap *tap, T *gt, int64_t row, int64_t t0, int64_t ns,
                               int64_t g, int64_t o0, const int OB, const int RB)
{
    const lc_call *c = &jb->c;
    const int64_t W = c->out[2], R = jb->R, block = OB * R * VL;
    int64_t yrow = row / c->out[1] * c->ys[2] + row % c->out[1] * c->ys[3];
    int64_t m0 = 0;
    do  /* once at least: a batch of 0 has a zero gradient */
        for (int64_t t = 0; t < ns; t++) {
            int64_t tt = t0 + t * VL, nv = lc_min(VL, W - tt), m1 = lc_min(c->n, m0 + ROWS_MB);
            for (int64_t r0 = 0; r0 < R; r0 += RB) {
                int fast = c->ys[4] == 1;  /* gy's lanes and every tap of the block inside the input: plain loads */
                for (int64_t r = r0; r < lc_min(r0 + RB, R); r++)
                    fast &= tap[r].ok && NAME(rows_fast)(c, tt * c->s[2] + tap[r].iw, nv);
                if (fast) NAME(rows_wg_tile)(jb, tap, gt + t * block, yrow, tt, nv, g, o0, r0, m0, m1, OB, RB, 1);
                else NAME(rows_wg_tile)(jb, tap, gt + t * block, yrow, tt, nv, g, o0, r0, m0, m1, OB, RB, 0);
            }
        }
    while ((m0 += ROWS_MB) < c->n);
    for (int64_t t = 0; t < ns; t++) {
        int64_t tt = t0 + t * VL;
        if (c->b)
            NAME(rows_bias_grad)(jb, yrow, row * W + tt, tt, lc_min(VL, W - tt), g * c->og + o0,
                                 lc_min(OB, c->og - o0));
        NAME(rows_untranspose)(jb, gt + t * block, row * W + tt, lc_min(VL, W - tt), g * c->og + o0,
                               lc_min(OB, c->og - o0));
    }
}

/* One position per filter (no shared banks: dispatch.c sends those to the channel path). */
STATIC int NAME(weight_grad_rows)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    const lc_call *c = &jb->c;
    lc_tap *tap = (lc_tap *)scratch;
    T *gt = (T *)(tap + jb->R);
    int64_t row = -1, t0;
    for (int64_t item = begin, ns; item < end; item += ns) {
        ns = NAME(rows_span_of)(jb, item, end, tap, &row, &t0);
        for (int64_t g = 0; g < c->groups; g++)
            for (int64_t o0 = 0; o0 < c->og; o0 += c->og >= ROWS_OB ? ROWS_OB : 1) {
                if (c->og >= ROWS_OB) NAME(rows_wg_span)(jb, tap, gt, row, t0, ns, g, o0, ROWS_OB, ROWS_RB4);
                else NAME(rows_wg_span)(jb, tap, gt, row, t0, ns, g, o0, 1, ROWS_RB1);
            }
    }
    return 0;
}
