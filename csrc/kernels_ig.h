/* The channel path of the input gradient (kernels.h's third operation): a gather over the
 * (position, kernel offset) pairs whose patch holds each input position, vectors along the batch
 * of gyt (P, O, npad), a tile of IG_CB<nv> channels x nv vectors (fewer channels: a tile no wider
 * than them). Included by kernels.h (same T, VB, NAME, V, VL, INLINE, STATIC).
 */

/* gyt[p, o, m] = gy[m, o, p] (0 for n <= m < npad), for positions begin..end. */
STATIC int NAME(transpose_gy)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    (void)scratch;
    const lc_call *c = &jb->c;
    const T *gy = (const T *)c->y;
    for (int64_t p = begin; p < end; p++) {
        int64_t o3[3];
        lc_unravel(p, c->out, o3);
        const T *src = gy + o3[0] * c->ys[2] + o3[1] * c->ys[3] + o3[2] * c->ys[4];
        T *dst = (T *)jb->gyt + p * jb->O * jb->npad;
        for (int64_t o = 0; o < jb->O; o++, dst += jb->npad) {
            for (int64_t m = 0; m < c->n; m++) dst[m] = src[m * c->ys[0] + o * c->ys[1]];
            for (int64_t m = c->n; m < jb->npad; m++) dst[m] = 0;
        }
    }
    return 0;
}

/* One tile: channels c0.. of group g (CB of them; `direct`: kernel-major and all CB inside the
 * group, so that the filter offsets are constants), samples n0..n0 + NV * VL, input position at
 * gxoff; accumulated over the pairs q0..q1 and output channels o0..o1 of a block (b), onto the
 * block before's sums in b->sums (none for the first block), and stored there, or into gx after the
 * last block. The filters of the next input position's pairs (`next`, when direct) are prefetched
 * as it goes: each is read once, from scattered cache lines that no hardware prefetcher foresees. */
typedef struct { int64_t q0, q1, o0, o1; int first, last; T *sums; } NAME(ig_block);

INLINE void NAME(ig_tile)(const lc_job *jb, const lc_pair *pairs, const NAME(ig_block) *b, const lc_pair *next,
                          int64_t nnext, int64_t g, int64_t c0, int64_t n0, int64_t gxoff, const int NV,
                          const int CB, const int direct)
{
    const lc_call *c = &jb->c;
    const T *gyt = (const T *)jb->gyt, *w = (const T *)c->w;
    const int64_t og = c->og, npad = jb->npad, R = jb->R, cs = c->kernel_major ? 1 : jb->K;
    const int64_t valid = lc_min(CB, c->cg - c0);
    int64_t coff[IG_CB1];
    for (int j = 0; j < CB; j++) coff[j] = direct ? j : (lc_min(c0 + j, c->cg - 1) - c0) * cs;
    V acc[IG_CB1][4];
    T *sums = b->sums + c0 * 4 * VL;  /* (channel, 4 vectors) of this group and samples */
    for (int j = 0; j < CB; j++)
        for (int v = 0; v < NV; v++) acc[j][v] = b->first || j >= valid ? NAME(bcast)(0) : NAME(load)(sums + (j * 4 + v) * VL);
    for (int64_t q = b->q0; q < b->q1; q++) {
        const T *gp = gyt + pairs[q].gy + (g * og + b->o0) * npad + n0;
        const T *wq = w + pairs[q].w + (g * og + b->o0) * R + c0 * cs;
        const T *pf = direct && q < nnext ? w + next[q].w + (g * og + b->o0) * R + c0 : NULL;
        for (int64_t o = b->o0; o < b->o1; o++, gp += npad, wq += R) {
            if (pf) {
                __builtin_prefetch(pf);
                __builtin_prefetch(pf + CB - 1);
                pf += R;
            }
            V gv[4];
            for (int v = 0; v < NV; v++) gv[v] = NAME(load)(gp + v * VL);
            for (int j = 0; j < CB; j++) {
                V bw = NAME(bcast)(wq[direct ? j : coff[j]]);
                for (int v = 0; v < NV; v++) acc[j][v] += bw * gv[v];
            }
        }
    }
    if (!b->last) {
        for (int j = 0; j < CB; j++)
            for (int v = 0; v < NV; v++)
                if (j < valid) NAME(store)(sums + (j * 4 + v) * VL, acc[j][v]);
        return;
    }
    T *gx = (T *)c->x;
    for (int j = 0; j < valid; j++) {
        T *dst = gx + (g * c->cg + c0 + j) * c->xs[1] + gxoff;
        for (int v = 0; v < NV; v++) {
            T lanes[VL];
            NAME(store)(lanes, acc[j][v]);
            for (int64_t l = 0; l < lc_min(VL, c->n - n0 - v * VL); l++) dst[(n0 + v * VL + l) * c->xs[0]] = lanes[l];
        }
    }
}

/* Every tile of CB channels, in one block. A single block's last tile overlaps the one before it
 * (kernel-major, cg >= CB: constant offsets); tiles that keep sums between blocks do not overlap
 * (the overlap would add a block twice), the last one then reads clamped offsets. */
INLINE void NAME(ig_channel_tiles)(const lc_job *jb, const lc_pair *pairs, const NAME(ig_block) *b,
                                   const lc_pair *next, int64_t nnext, int64_t g, int64_t n0, int64_t gxoff,
                                   const int NV, const int CB)
{
    const int64_t cg = jb->c.cg;
    const int whole = b->first && b->last;
    for (int64_t c0 = 0; c0 < cg; c0 += CB) {
        if (jb->c.kernel_major && cg >= CB && (whole || c0 + CB <= cg))
            NAME(ig_tile)(jb, pairs, b, next, nnext, g, whole ? lc_min(c0, cg - CB) : c0, n0, gxoff, NV, CB, 1);
        else
            NAME(ig_tile)(jb, pairs, b, next, nnext, g, c0, n0, gxoff, NV, CB, 0);
    }
}

/* The blocks of one tile row: the (pair, output channel) products of an input position, split so
 * that the gyt vectors a block reads (NV * VL per product) stay near IG_BLOCK_BYTES, in L1 while
 * every channel tile reads them again: whole pairs when a pair's output channels fit, else ranges
 * of one pair's output channels. Then tiles of CB channels, or for fewer channels a tile no wider
 * than them (not CB with copies of the last). */
#define IG_BLOCK_BYTES 8192
INLINE void NAME(ig_channels)(const lc_job *jb, const lc_pair *pairs, int64_t npairs, const lc_pair *next,
                              int64_t nnext, int64_t g, int64_t n0, int64_t gxoff, const int NV, const int CB,
                              T *sums)
{
    const int64_t cg = jb->c.cg, og = jb->c.og, fit = lc_max(1, IG_BLOCK_BYTES / (NV * VB));
    const int64_t qstep = og <= fit ? fit / og : 1, ostep = og <= fit ? og : fit;
    for (int64_t q0 = 0; q0 < npairs || q0 == 0; q0 += qstep)
        for (int64_t o0 = 0; o0 < og; o0 += ostep) {
            NAME(ig_block) b = {q0, lc_min(q0 + qstep, npairs), o0, lc_min(o0 + ostep, og), q0 == 0 && o0 == 0,
                                q0 + qstep >= npairs && o0 + ostep >= og, sums};
            if (cg < CB) {
                if (cg == 1) NAME(ig_channel_tiles)(jb, pairs, &b, next, nnext, g, n0, gxoff, NV, 1);
                else if (cg == 2) NAME(ig_channel_tiles)(jb, pairs, &b, next, nnext, g, n0, gxoff, NV, 2);
                else if (cg == 3) NAME(ig_channel_tiles)(jb, pairs, &b, next, nnext, g, n0, gxoff, NV, 3);
                else if (cg <= 4) NAME(ig_channel_tiles)(jb, pairs, &b, next, nnext, g, n0, gxoff, NV, 4);
                else if (cg <= 8 && CB > 8) NAME(ig_channel_tiles)(jb, pairs, &b, next, nnext, g, n0, gxoff, NV, 8);
                else NAME(ig_channel_tiles)(jb, pairs, &b, next, nnext, g, n0, gxoff, NV, CB);
            } else {
                NAME(ig_channel_tiles)(jb, pairs, &b, next, nnext, g, n0, gxoff, NV, CB);
            }
        }
}

/* Per-thread scratch of the gather: the pairs of two positions, then (aligned to a vector) the sums
 * kept between blocks, cg channels x 4 vectors. */
STATIC size_t NAME(input_grad_scratch)(const lc_job *j)
{
    return 2 * (size_t)j->K * sizeof(lc_pair) + VB + (size_t)(j->c.cg * 4 * VL) * sizeof(T);
}

/* Items: rows of input positions (d, h), each over its w; scratch: input_grad_scratch. */
STATIC int NAME(input_grad)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    const lc_call *c = &jb->c;
    lc_pair *pairs = (lc_pair *)scratch, *next = pairs + jb->K;
    T *sums = (T *)lc_align_up(next + jb->K, VB);
    for (int64_t row = begin; row < end; row++) {
        int64_t i3[3] = {row / c->in[1], row % c->in[1], 0};
        int64_t npairs = lc_pairs(jb, i3, pairs);
        for (; i3[2] < c->in[2]; i3[2]++) {
            int64_t gxoff = i3[0] * c->xs[2] + i3[1] * c->xs[3] + i3[2] * c->xs[4], nnext = 0;
            if (i3[2] + 1 < c->in[2]) {
                int64_t i4[3] = {i3[0], i3[1], i3[2] + 1};
                nnext = lc_pairs(jb, i4, next);
            }
            for (int64_t g = 0; g < c->groups; g++)
                for (int64_t n0 = 0; n0 < c->n;) {
                    int64_t vectors = (jb->npad - n0) / VL, pf = n0 ? 0 : nnext;
                    if (vectors >= 4) {
                        NAME(ig_channels)(jb, pairs, npairs, next, pf, g, n0, gxoff, 4, IG_CB4, sums);
                        n0 += 4 * VL;
                    } else if (vectors >= 2) {
                        NAME(ig_channels)(jb, pairs, npairs, next, pf, g, n0, gxoff, 2, IG_CB2, sums);
                        n0 += 2 * VL;
                    } else {
                        NAME(ig_channels)(jb, pairs, npairs, next, pf, g, n0, gxoff, 1, IG_CB1, sums);
                        n0 += VL;
                    }
                }
            lc_pair *done = pairs;  /* the next position's pairs become the current ones */
            pairs = next;
            next = done;
            npairs = nnext;
        }
    }
    return 0;
}

