/* The input gradient of channel-major filters as a scatter (kernels.h's third operation): items
 * (group, block of sc_cb channels, block of sc_nb samples of gyt), each over every output position
 * p: acc[r, n] = sum_o w[p, o, r] gyt[p, o, n] for the block's filter elements r = c * K + k (one
 * run of sc_cb * K elements per filter), added into a per-thread gxt (channel, input position,
 * sample) at the input position of (p, k), and gxt written into gx at the end. Each filter element
 * is read once and from one run (the gather of kernels_ig.h reads a channel-major filter's cache
 * lines once per kernel row); no two items write the same element of gx.
 * Included by kernels.h (same T, VB, NAME, V, VL, INLINE, STATIC).
 */

/* Per thread: the input offsets of one position's kernel offsets (K), the kernel offset and the
 * gxt channel offset of each element of a block (2 * sc_cb * K), and gxt (sc_cb, inputs, sc_nb). */
STATIC size_t NAME(ig_scatter_scratch)(const lc_job *j)
{
    int64_t inputs = j->c.in[0] * j->c.in[1] * j->c.in[2];
    return (size_t)(j->K + 2 * j->sc_cb * j->K) * sizeof(int64_t) + (size_t)(j->sc_cb * inputs * j->sc_nb) * sizeof(T);
}

/* Rows r0.. of a block (RB of them, `rows` valid) x NV batch vectors, summed over the og output
 * channels, added into gxt; `full`: all RB rows valid (constant offsets into the filters). */
INLINE void NAME(igs_tile)(const T *wr, int64_t R, const T *gp, int64_t npad, int64_t og, int64_t rows,
                           const int64_t *koff, const int64_t *rk, const int64_t *rc, T *gxt, const int NV,
                           const int RB, const int full)
{
    int64_t woff[IG_CB1];
    for (int j = 0; j < RB; j++) woff[j] = full ? j : lc_min(j, rows - 1);
    V acc[IG_CB1][4];
    for (int j = 0; j < RB; j++)
        for (int v = 0; v < NV; v++) acc[j][v] = NAME(bcast)(0);
    for (int64_t o = 0; o < og; o++, wr += R, gp += npad) {
        V gv[4];
        for (int v = 0; v < NV; v++) gv[v] = NAME(load)(gp + v * VL);
        for (int j = 0; j < RB; j++) {
            V b = NAME(bcast)(wr[full ? j : woff[j]]);
            for (int v = 0; v < NV; v++) acc[j][v] += b * gv[v];
        }
    }
    for (int j = 0; j < RB; j++) {
        if (j >= rows || koff[rk[j]] < 0) continue;  /* past the block, or padding */
        T *d = gxt + rc[j] + koff[rk[j]];
        for (int v = 0; v < NV; v++) NAME(store)(d + v * VL, NAME(load)(d + v * VL) + acc[j][v]);
    }
}

/* Every tile of one position's rows at NV batch vectors. */
INLINE void NAME(igs_rows)(const T *wp, int64_t R, const T *gp, int64_t npad, int64_t og, int64_t rows,
                           const int64_t *koff, const int64_t *rk, const int64_t *rc, T *gxt, const int NV,
                           const int RB)
{
    int64_t r0 = 0;
    for (; r0 + RB <= rows; r0 += RB)
        NAME(igs_tile)(wp + r0, R, gp, npad, og, RB, koff, rk + r0, rc + r0, gxt, NV, RB, 1);
    if (r0 < rows) NAME(igs_tile)(wp + r0, R, gp, npad, og, rows - r0, koff, rk + r0, rc + r0, gxt, NV, RB, 0);
}

/* gx[n, c0 + cc, i] = gxt[cc, i, n - nbase] for the block's channels and samples. */
STATIC void NAME(igs_write)(const lc_job *jb, const T *gxt, int64_t channel, int64_t nc, int64_t nbase,
                            int64_t nlen)
{
    const lc_call *c = &jb->c;
    const int64_t nb = jb->sc_nb, inputs = c->in[0] * c->in[1] * c->in[2];
    const T *end = gxt + nc * inputs * nb;
    T *gx = (T *)c->x;
    for (int64_t cc = 0; cc < nc; cc++)
        for (int64_t row = 0; row < c->in[0] * c->in[1]; row++) {
            const T *src = gxt + (cc * inputs + row * c->in[2]) * nb;
            T *dst = gx + nbase * c->xs[0] + (channel + cc) * c->xs[1] + row / c->in[1] * c->xs[2] +
                     row % c->in[1] * c->xs[3];
            if (c->xs[4] == 1) {  /* dst as the end of gx: no whole vector stored past a row */
                NAME(transpose)(src, nb, end, dst, c->xs[0], dst, c->in[2], nlen, 0);
                continue;
            }
            for (int64_t iw = 0; iw < c->in[2]; iw++)
                for (int64_t m = 0; m < nlen; m++) dst[m * c->xs[0] + iw * c->xs[4]] = src[iw * nb + m];
        }
}

/* Items: (group, channel block, sample block), the last fastest. */
STATIC int NAME(input_grad_scatter)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    const lc_call *c = &jb->c;
    const T *gyt = (const T *)jb->gyt, *w = (const T *)c->w;
    const int64_t K = jb->K, R = jb->R, O = jb->O, og = c->og, npad = jb->npad, nb = jb->sc_nb;
    const int64_t inputs = c->in[0] * c->in[1] * c->in[2];
    int64_t *koff = (int64_t *)scratch, *rk = koff + K, *rc = rk + jb->sc_cb * K;
    T *gxt = (T *)(rc + jb->sc_cb * K);
    for (int64_t item = begin; item < end; item++) {
        int64_t nblock = item % jb->sc_nblocks, rest = item / jb->sc_nblocks;
        int64_t c0 = rest % jb->sc_cblocks * jb->sc_cb, g = rest / jb->sc_cblocks;
        int64_t nc = lc_min(jb->sc_cb, c->cg - c0), rows = nc * K, nbase = nblock * nb;
        int64_t nlen = lc_min(nb, npad - nbase);  /* a multiple of VL */
        for (int64_t r = 0; r < rows; r++) {
            rk[r] = r % K;
            rc[r] = r / K * inputs * nb;
        }
        memset(gxt, 0, (size_t)(nc * inputs * nb) * sizeof(T));
        for (int64_t p = 0; p < jb->P; p++) {
            int64_t o3[3];
            lc_unravel(p, c->out, o3);
            lc_kernel_inputs(jb, o3, nb, -1, koff);
            const T *wp = w + (c->bank ? c->bank[p] : p) * O * R + g * og * R + c0 * K;
            if (p + 1 < jb->P) {  /* the next position's runs: one per filter, far apart (no prefetcher follows) */
                const T *next = w + (c->bank ? c->bank[p + 1] : p + 1) * O * R + g * og * R + c0 * K;
                for (int64_t o = 0; o < og; o++) {
                    for (int64_t e = 0; e < rows; e += 64 / (int64_t)sizeof(T)) __builtin_prefetch(next + o * R + e);
                    __builtin_prefetch(next + o * R + rows - 1);
                }
            }
            const T *gp = gyt + (p * O + g * og) * npad + nbase;
            for (int64_t n0 = 0; n0 < nlen;) {
                int64_t vectors = (nlen - n0) / VL;
                if (vectors >= 4) {
                    NAME(igs_rows)(wp, R, gp + n0, npad, og, rows, koff, rk, rc, gxt + n0, 4, IG_CB4);
                    n0 += 4 * VL;
                } else if (vectors >= 2) {
                    NAME(igs_rows)(wp, R, gp + n0, npad, og, rows, koff, rk, rc, gxt + n0, 2, IG_CB2);
                    n0 += 2 * VL;
                } else {
                    NAME(igs_rows)(wp, R, gp + n0, npad, og, rows, koff, rk, rc, gxt + n0, 1, IG_CB1);
                    n0 += VL;
                }
            }
        }
        NAME(igs_write)(jb, gxt, g * c->cg + c0, nc, nbase, lc_min(nlen, c->n - nbase));
    }
    return 0;
}
