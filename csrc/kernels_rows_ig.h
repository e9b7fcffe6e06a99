/* The rows path of the input gradient: vectors along the input positions of a row, for inputs
 * with few channels. Included by kernels.h after kernels_rows.h.
 *
 * An item is a tile of VL input positions iw = phase + s * (m0 + l) of one input row (d, h), for
 * one phase (iw mod s, the stride s along w): every (kernel offset, output row) tap that reaches
 * them reaches all lanes from the consecutive output positions p = q + m0 + l, so that
 *   gx[n, c, iw] = sum_taps sum_o wt[o, c, tap, l] * gy[n, o, row(tap), q + m0 + l]
 * with the filters of the tile's positions gathered once per tile into wt (zeros for positions
 * outside the output), or in 1d read from a window of positions transposed once per span (filter
 * (o, c) of tap q at wt + o * so + c * sc + toff[q] either way), and a ROWS_NB x CB tile of (sample,
 * channel) vectors. A gather, not a scatter: each gx element is written once, by one thread.
 */

/* Tiles of a span (consecutive tiles of one row and phase among a thread's items): as many as keep
 * their gathered filters within ROWS_SPAN_BYTES (at least one). */
INLINE int64_t NAME(rows_ig_span)(const lc_job *j)
{
    int64_t tile = j->c.og * j->c.cg * j->K * VL * (int64_t)sizeof(T);
    return lc_max(1, lc_min(ROWS_SPAN_MAX, ROWS_SPAN_BYTES / tile));
}

/* Whether the span's filters are one transposed window of positions (one kernel offset along d and
 * h, no banks: every tap reaches the same output row), else gathered per tile. */
INLINE int NAME(rows_ig_window)(const lc_job *j)
{
    return j->c.k[0] * j->c.k[1] == 1 && !j->c.bank;
}

/* Positions of a span's window: its tiles' and the reach of the kernel, in whole vectors. */
INLINE int64_t NAME(rows_ig_window_len)(const lc_job *j)
{
    int64_t reach = (j->c.k[2] - 1) * j->c.dil[2] / j->c.s[2] + 1;
    return (NAME(rows_ig_span)(j) * VL + reach + 2 * VL - 1) / VL * VL;
}

/* Per-thread scratch: the taps of a row and phase, each tap's filter offset, a span's filters of
 * one group (gathered per tile, or the window). */
STATIC size_t NAME(input_grad_rows_scratch)(const lc_job *j)
{
    int64_t gathered = NAME(rows_ig_span)(j) * j->c.og * j->c.cg * j->K * VL;
    int64_t window = NAME(rows_ig_window)(j) ? j->c.og * j->R * NAME(rows_ig_window_len)(j) : 0;
    return (size_t)j->K * (sizeof(lc_itap) + sizeof(int64_t)) + (size_t)(lc_max(gathered, window) + VL) * sizeof(T);
}

/* The window of group g: wt[(o * R + r) * len + p - base] = w[prow + p, g * og + o, r] for positions
 * base <= p < base + len of output row prow (zeros outside it), in register transposes of rows of w. */
INLINE void NAME(rows_ig_window_fill)(const lc_job *jb, T *wt, int64_t prow, int64_t base, int64_t len, int64_t g)
{
    const lc_call *c = &jb->c;
    const T *w = (const T *)c->w;
    const int64_t OR = jb->O * jb->R, cols = c->og * jb->R;
    int64_t p0 = lc_max(0, base), p1 = lc_min(c->out[2], base + len);
    for (int64_t e = 0; e < cols; e++) {
        T *row = wt + e * len;
        for (int64_t i = 0; i < p0 - base && i < len; i++) row[i] = 0;
        for (int64_t i = lc_max(0, p1 - base); i < len; i++) row[i] = 0;
    }
    if (p1 > p0)
        NAME(transpose)(w + (prow + p0) * OR + g * cols, OR, w + c->w_extent, wt + (p0 - base), len, wt + cols * len,
                        p1 - p0, cols, 0);
}

/* The filters of group g at the tile's positions: wt[((o * cg + c) * ntaps + q) * VL + l]. */
INLINE void NAME(rows_ig_filters)(const lc_job *jb, const lc_itap *tap, int64_t ntaps, T *wt, int64_t g,
                                  int64_t m0, int64_t nv)
{
    const lc_call *c = &jb->c;
    const int64_t og = c->og, cg = c->cg, R = jb->R;
    for (int64_t q = 0; q < ntaps; q++) {
        /* lanes l0..l1 are positions inside the output */
        int64_t pb = tap[q].q + m0, l0 = lc_min(lc_max(0, -pb), nv), l1 = lc_max(l0, lc_min(nv, c->out[2] - pb));
        for (int64_t o = 0; o < og; o++)
            for (int64_t ch = 0; ch < cg; ch++) {
                int64_t r = c->kernel_major ? tap[q].k * cg + ch : ch * jb->K + tap[q].k;
                T *dst = wt + ((o * cg + ch) * ntaps + q) * VL;
                for (int64_t l = 0; l < l0; l++) dst[l] = 0;
                NAME(rows_lanes_of_w)(jb, dst + l0, tap[q].prow + pb + l0, l1 - l0, (g * og + o) * R + r);
                for (int64_t l = l1; l < VL; l++) dst[l] = 0;
            }
    }
}

/* Whether tap q's lanes at m0 are one plain load of gy (inside the output row). */
INLINE int NAME(rows_ig_fast)(const lc_call *c, const lc_itap *tap, int64_t m0, int64_t nv)
{
    int64_t pb = tap->q + m0;
    return nv == VL && c->ys[4] == 1 && pb >= 0 && pb + VL - 1 < c->out[2];
}

/* FAST: every tap is one plain load, so that the loops make no call (vector registers are
 * caller-saved: a call keeps the accumulators in memory). */
INLINE void NAME(rows_ig_tile)(const lc_job *jb, const lc_itap *tap, int64_t ntaps, const T *wt, int64_t so,
                               int64_t sc, const int64_t *toff, int64_t gxrow, int64_t m0, int64_t nv, int64_t g,
                               int64_t n0, int64_t c0, const int NB, const int CB, const int FAST)
{
    const lc_call *c = &jb->c;
    const T *gy = (const T *)c->y;
    const int64_t og = c->og, cg = c->cg;
    V acc[ROWS_NB1][ROWS_OB];
    for (int i = 0; i < NB; i++)
        for (int j = 0; j < CB; j++) acc[i][j] = NAME(bcast)(0);
    for (int64_t q = 0; q < ntaps; q++) {
        int64_t pb = tap[q].q + m0;
        int fast = FAST || NAME(rows_ig_fast)(c, tap + q, m0, nv);
        const T *gq[ROWS_NB1];
        for (int i = 0; i < NB; i++) gq[i] = gy + lc_min(n0 + i, c->n - 1) * c->ys[0] + g * og * c->ys[1] + tap[q].gy;
        for (int64_t o = 0; o < og; o++) {
            V gv[ROWS_NB1], wv[ROWS_OB];
            for (int i = 0; i < NB; i++) {
                const T *go = gq[i] + o * c->ys[1];
                if (FAST || fast) {
                    gv[i] = NAME(load)(go + pb);
                    if (q == 0) __builtin_prefetch(go + pb + ROWS_AHEAD);
                } else {
                    T lanes[VL];
                    NAME(rows_gather)(lanes, go, pb, 1, c->ys[4], c->out[2], nv);
                    gv[i] = NAME(load)(lanes);
                }
            }
            for (int j = 0; j < CB; j++) wv[j] = NAME(load)(wt + o * so + (c0 + j) * sc + toff[q]);
            for (int i = 0; i < NB; i++)
                for (int j = 0; j < CB; j++) acc[i][j] += gv[i] * wv[j];
        }
    }
    T *gx = (T *)c->x;
    const int64_t es = c->s[2] * c->xs[4];
    for (int i = 0; i < NB; i++)
        for (int j = 0; j < CB; j++)
            if (i < c->n - n0) {
                T *gp = gx + (n0 + i) * c->xs[0] + (g * cg + c0 + j) * c->xs[1] + gxrow;
                if (FAST && es == 1) {  /* whole vectors (FAST: nv == VL) */
                    __builtin_prefetch(gp + ROWS_AHEAD, 1);  /* the line a later tile writes */
                    NAME(store)(gp, acc[i][j]);
                } else {
                    NAME(rows_store)(gp, es, nv, acc[i][j]);
                }
            }
}

/* A span's tiles m0, m0 + VL, ... (ns of them) of group g: their filters gathered per tile or
 * transposed as one window, then each block of samples and channels across the span (each
 * sample's rows read and written as a few streams). */
INLINE void NAME(rows_ig_span_of_group)(const lc_job *jb, const lc_itap *tap, int64_t ntaps, int64_t *toff, T *wt,
                                        int64_t gxrow, int64_t m0, int64_t ns, int64_t npos, int64_t g)
{
    const lc_call *c = &jb->c;
    const int64_t cg = c->cg, step = c->s[2] * c->xs[4] * VL;
    const int window = NAME(rows_ig_window)(jb);
    int64_t so, sc, tile_step, len = 0, base = 0;
    if (window) {  /* tap q of tile t reads positions tap[q].q + m0 + t * VL + l of the window */
        int64_t qmin = ntaps ? tap[0].q : 0;
        for (int64_t q = 0; q < ntaps; q++) qmin = lc_min(qmin, tap[q].q);
        len = NAME(rows_ig_window_len)(jb);
        base = m0 + qmin;
        NAME(rows_ig_window_fill)(jb, wt, ntaps ? tap[0].prow : 0, base, len, g);
        for (int64_t q = 0; q < ntaps; q++)
            toff[q] = (c->kernel_major ? tap[q].k * cg : tap[q].k) * len + tap[q].q + m0 - base;
        so = jb->R * len;
        sc = (c->kernel_major ? 1 : jb->K) * len;
        tile_step = VL;
    } else {
        for (int64_t q = 0; q < ntaps; q++) toff[q] = q * VL;
        so = cg * ntaps * VL;
        sc = ntaps * VL;
        tile_step = c->og * cg * ntaps * VL;
    }
    int fast[ROWS_SPAN_MAX];
    for (int64_t t = 0; t < ns; t++) {
        int64_t mt = m0 + t * VL, nv = lc_min(VL, npos - mt);
        if (!window) NAME(rows_ig_filters)(jb, tap, ntaps, wt + t * tile_step, g, mt, nv);
        fast[t] = nv == VL;  /* FAST stores whole vectors (also with no tap at all) */
        for (int64_t q = 0; q < ntaps; q++) fast[t] &= NAME(rows_ig_fast)(c, tap + q, mt, nv);
    }
    const int wide = cg >= ROWS_OB;
    for (int64_t n0 = 0; n0 < c->n; n0 += wide ? ROWS_NB4 : ROWS_NB1)
        for (int64_t c0 = 0; c0 < cg; c0 += wide ? ROWS_OB : 1) {
            int64_t cb = wide ? lc_min(c0, cg - ROWS_OB) : c0;  /* the last tile overlaps */
            for (int64_t t = 0; t < ns; t++) {
                int64_t mt = m0 + t * VL, nv = lc_min(VL, npos - mt), row = gxrow + t * step;
                const T *w = wt + t * tile_step;
                if (wide && fast[t])
                    NAME(rows_ig_tile)(jb, tap, ntaps, w, so, sc, toff, row, mt, nv, g, n0, cb, ROWS_NB4, ROWS_OB, 1);
                else if (wide)
                    NAME(rows_ig_tile)(jb, tap, ntaps, w, so, sc, toff, row, mt, nv, g, n0, cb, ROWS_NB4, ROWS_OB, 0);
                else if (fast[t])
                    NAME(rows_ig_tile)(jb, tap, ntaps, w, so, sc, toff, row, mt, nv, g, n0, c0, ROWS_NB1, 1, 1);
                else
                    NAME(rows_ig_tile)(jb, tap, ntaps, w, so, sc, toff, row, mt, nv, g, n0, c0, ROWS_NB1, 1, 0);
            }
        }
}

/* Items: (input row, phase, tile of VL positions of that phase); jb->tiles tiles per phase. */
STATIC int NAME(input_grad_rows)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    const lc_call *c = &jb->c;
    lc_itap *tap = (lc_itap *)scratch;
    int64_t *toff = (int64_t *)(tap + jb->K);
    T *wt = (T *)(toff + jb->K);
    const int64_t s = c->s[2], phases = lc_min(s, c->in[2]);
    int64_t key = -1, ntaps = 0;
    for (int64_t item = begin, ns; item < end; item += ns) {
        int64_t t = item % jb->tiles, m0 = t * VL, phase = item / jb->tiles % phases, row = item / jb->tiles / phases;
        int64_t npos = (c->in[2] - phase + s - 1) / s;  /* positions of this phase */
        ns = lc_min(NAME(rows_ig_span)(jb), lc_min(end - item, jb->tiles - t));
        int64_t live = lc_min(ns, (npos - m0 + VL - 1) / VL);  /* tiles holding positions */
        if (live <= 0) continue;
        if (row * phases + phase != key) ntaps = lc_itaps(jb, row, phase, tap);
        key = row * phases + phase;
        int64_t gxrow = row / c->in[1] * c->xs[2] + row % c->in[1] * c->xs[3] + (phase + s * m0) * c->xs[4];
        for (int64_t g = 0; g < c->groups; g++)
            NAME(rows_ig_span_of_group)(jb, tap, ntaps, toff, wt, gxrow, m0, live, npos, g);
    }
    return 0;
}
