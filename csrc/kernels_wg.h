/* The weight gradient of the channel path (kernels.h's second operation): per position, outer
 * products of its output gradient, staged (N, O) in scratch, and the patch's vector chunks, a
 * WG_OB x WG_RV tile of accumulators summed over the batch. Included by kernels.h (same T, VB,
 * NAME, V, VL, INLINE, STATIC).
 */

/* Chunks c0..c1 (all full or all partial) of rows dst[0 : nvalid_o] (row stride R). */
INLINE void NAME(wg_tile)(T *dst, int64_t R, const T *const gyr[WG_OB], int64_t gys, const T *xg, int64_t xs,
                          int64_t n, const lc_seg *ch, int64_t c0, int64_t c1, int64_t nvalid_o, const int partial,
                          int once)
{
    for (int64_t cb = c0; cb < c1; cb += WG_RV) {
        int64_t xo[WG_RV], len[WG_RV];
        for (int r = 0; r < WG_RV; r++) {
            const lc_seg *s = ch + lc_min(cb + r, c1 - 1);
            xo[r] = s->x;
            len[r] = s->len;
        }
        V acc[WG_OB][WG_RV];
        for (int j = 0; j < WG_OB; j++)
            for (int r = 0; r < WG_RV; r++) acc[j][r] = NAME(bcast)(0);
        for (int64_t m = 0; m < n; m++) {
            const T *xm = xg + m * xs;
            V xv[WG_RV];
            for (int r = 0; r < WG_RV; r++)
                xv[r] = partial ? NAME(load_part)(xm + xo[r], len[r]) : NAME(load)(xm + xo[r]);
            for (int j = 0; j < WG_OB; j++) {
                V b = NAME(bcast)(gyr[j][m * gys]);
                for (int r = 0; r < WG_RV; r++) acc[j][r] += b * xv[r];
            }
        }
        for (int j = 0; j < WG_OB; j++)
            for (int r = 0; r < WG_RV; r++) {
                if (j >= nvalid_o || r >= c1 - cb) continue;
                T *d = dst + j * R + ch[cb + r].w;
                if (partial) NAME(store_part)(d, acc[j][r], ch[cb + r].len);
                else if (once) NAME(store_once)(d, acc[j][r]);
                else NAME(store)(d, acc[j][r]);
            }
    }
}

/* The gradient of position p's filters into dst (O, R), kernel-major; `once`: dst is the result
 * (not a buffer read again). With `final`, each block of rows of dst, once computed, is written
 * (or added, `add`) into final (O, R) of c.kernel_major's layout while it is in the caches; a
 * channel-major one through `stage` (WG_OB rows), streamed into final: final's unaligned rows
 * would otherwise be read from memory before they are written. */
STATIC void NAME(wg_position)(const lc_job *jb, int64_t p, T *dst, lc_seg *seg, lc_seg *ch, int once, T *final,
                              int add, T *stage, T *gyp)
{
    const lc_call *c = &jb->c;
    const T *x = (const T *)c->x, *gy = (const T *)c->y;
    int64_t o3[3], covered, nfull, og = c->og, O = jb->O, n = c->n;
    lc_unravel(p, c->out, o3);
    int64_t nall = NAME(chunks)(seg, lc_segments(jb, o3, seg, &covered), ch, &nfull);
    if (covered < jb->R)  /* padding: those filter elements get no gradient */
        for (int64_t e = 0; e < O * jb->R; e++) dst[e] = 0;
    int64_t yoff = o3[0] * c->ys[2] + o3[1] * c->ys[3] + o3[2] * c->ys[4];
    /* gyp (N, O): position p's output gradient, read from its scattered lines once, not once per
     * chunk of the patch */
    for (int64_t m = 0; m < n; m++)
        for (int64_t o = 0; o < O; o++) gyp[m * O + o] = gy[m * c->ys[0] + o * c->ys[1] + yoff];
    for (int64_t g = 0; g < c->groups; g++)
        for (int64_t o0 = 0; o0 < og; o0 += WG_OB) {
            const T *gyr[WG_OB];
            for (int j = 0; j < WG_OB; j++) gyr[j] = gyp + g * og + lc_min(o0 + j, og - 1);
            T *d = dst + (g * og + o0) * jb->R;
            int64_t valid = lc_min(WG_OB, og - o0);
            NAME(wg_tile)(d, jb->R, gyr, O, x + g * c->cg, c->xs[0], n, ch, 0, nfull, valid, 0, once);
            NAME(wg_tile)(d, jb->R, gyr, O, x + g * c->cg, c->xs[0], n, ch, nfull, nall, valid, 1, once);
            if (final && !add && !c->kernel_major) {
                NAME(from_kernel_major)(d, stage, valid, c->cg, jb->K, 0, 0);
                NAME(copy_once)(final + (d - dst), stage, valid * jb->R);
            } else if (final) {
                NAME(from_kernel_major)(d, final + (d - dst), valid, c->cg, jb->K, (int)c->kernel_major, add);
            }
        }
    if (c->b)  /* the bias gradient of position p (each position once, also with banks) */
        for (int64_t o = 0; o < O; o++) {
            T sum = 0;
            for (int64_t m = 0; m < n; m++) sum += gyp[m * O + o];
            ((T *)c->b)[o * jb->P + p] = sum;
        }
}

/* Items: positions, or banks (then the positions of each bank are summed into it). */
STATIC int NAME(weight_grad)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    const lc_call *c = &jb->c;
    T *gw = (T *)c->w;
    const int64_t OR = jb->O * jb->R;
    lc_seg *seg = (lc_seg *)scratch, *ch = seg + jb->K + 1;
    T *tile = (T *)(ch + jb->R / VL + jb->K + 1), *stage = tile + OR, *gyp = stage + WG_OB * jb->R;
    for (int64_t item = begin; item < end; item++) {
        T *dst = gw + item * OR;
        if (!c->bank && c->kernel_major) {
            NAME(wg_position)(jb, item, dst, seg, ch, 1, NULL, 0, stage, gyp);
        } else if (!c->bank) {
            NAME(wg_position)(jb, item, tile, seg, ch, 0, dst, 0, stage, gyp);
        } else {
            for (int64_t e = 0; e < OR; e++) dst[e] = 0;
            for (int64_t q = jb->start[item]; q < jb->start[item + 1]; q++) {
                NAME(wg_position)(jb, jb->order[q], tile, seg, ch, 0, dst, 1, stage, gyp);
            }
        }
    }
#ifdef LC_FENCE
    LC_FENCE();  /* the streamed stores are visible before the threads are joined */
#endif
    return 0;
}
