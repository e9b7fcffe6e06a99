/* The three operations of a locally connected layer, written once over a vector type.
 *
 * Included by each ISA's translation unit once per (scalar type, vector width), with
 *   T          float or double
 *   VB         bytes of one vector (GCC/Clang vector extensions)
 *   NAME(s)    the name of symbol s in this instantiation
 *   LC_ATTR    the function attributes (the target instruction set)
 *   FWD_NB, FWD_NB_SMALL, FWD_OB, WG_OB, WG_RV, IG_CB1, IG_CB2, IG_CB4    register tiles (below)
 *
 * forward:      y[n, o, p] = b[o, p] + sum_r w[p, o, r] x[n, patch(p, r)]: per position, dot
 *               products along the patch's runs (contiguous in a channels-last x and in a
 *               kernel-major w), an FWD_NB x FWD_OB tile of (sample, output channel) accumulators
 *               (FWD_NB_SMALL samples where FWD_NB would pad the batch much more). The bias b
 *               ((O, P), or (O,) shared; none without one) is added to each sum as it is stored,
 *               on every path.
 * weight grad:  gw[p, o, r] = sum_n gy[n, o, p] x[n, patch(p, r)]: outer products, a WG_OB x WG_RV
 *               tile of (output channel, patch vector) accumulators summed over the batch; and,
 *               when asked (c.b), the bias gradient gb[o, p] = sum_n gy[n, o, p] from the same
 *               position's gy, on every path.
 * input grad:   gx[n, c, i] = sum_{(p, k) reaching i} sum_o w[p, o, (k, c)] gy[n, o, p]: a gather
 *               over the positions whose patch holds i (no scatter, no atomics); vectors along
 *               the batch of gyt (P, O, npad), a tile of IG_CB<nv> channels x nv vectors.
 * Remainder tiles repeat the last valid row or column and store only the valid ones.
 */

typedef T NAME(vec) __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));
#define V NAME(vec)
#define VL ((int64_t)(VB / sizeof(T)))
#define INLINE static inline __attribute__((always_inline)) LC_ATTR
#define STATIC static LC_ATTR

INLINE V NAME(load)(const T *p) { return *(const V *)p; }
INLINE void NAME(store)(T *p, V v) { *(V *)p = v; }
/* s - 0 is exactly s (not so s + 0, for s = -0): compilers make it one broadcast, often folded
 * into the multiply-add as a broadcast load. */
INLINE V NAME(bcast)(T s) { return s - (V){0}; }

/* A store that bypasses the caches (LC_NT_STORE, when the ISA has one and p is aligned), for
 * results written once and not read again soon (the weight gradient); else a plain store. */
INLINE void NAME(store_once)(T *p, V v)
{
#ifdef LC_NT_STORE
    if ((uintptr_t)p % VB == 0) return (void)LC_NT_STORE(p, v);
#endif
    NAME(store)(p, v);
}

/* The first len < VL lanes (zeros past them), and their store. */
INLINE V NAME(load_part)(const T *p, int64_t len)
{
#ifdef LC_LOAD_PART  /* one masked load: lane by lane, a few-channel run costs more than its arithmetic */
    return (V)LC_LOAD_PART(p, len);
#else
    V v = {0};
    for (int64_t i = 0; i < len; i++) v[i] = p[i];
    return v;
#endif
}
INLINE void NAME(store_part)(T *p, V v, int64_t len)
{
#ifdef LC_STORE_PART
    LC_STORE_PART(p, v, len);
#else
    for (int64_t i = 0; i < len; i++) p[i] = v[i];
#endif
}

/* The sum of the lanes: 16-byte pieces added as vectors, then their lanes. */
INLINE T NAME(hsum)(V v)
{
#if VB > 16
    typedef T Q __attribute__((vector_size(16), aligned(sizeof(T)), may_alias));
    Q acc, part;
    memcpy(&acc, &v, 16);
    for (int b = 16; b < VB; b += 16) {
        memcpy(&part, (const char *)&v + b, 16);
        acc += part;
    }
#else
    V acc = v;
#endif
    T s = 0;
    for (int i = 0; i < (int)(sizeof(acc) / sizeof(T)); i++) s += acc[i];
    return s;
}

/* Runs split into vector chunks: the full ones first (*nfull of them), then the partial tails. */
STATIC int64_t NAME(chunks)(const lc_seg *seg, int64_t nseg, lc_seg *ch, int64_t *nfull)
{
    int64_t n = 0;
    for (int64_t s = 0; s < nseg; s++)
        for (int64_t off = 0; off + VL <= seg[s].len; off += VL)
            ch[n++] = (lc_seg){seg[s].x + off, seg[s].w + off, VL};
    *nfull = n;
    for (int64_t s = 0; s < nseg; s++) {
        int64_t rest = seg[s].len % VL;
        if (rest) ch[n++] = (lc_seg){seg[s].x + seg[s].len - rest, seg[s].w + seg[s].len - rest, rest};
    }
    return n;
}

/* Per-thread scratch of forward and weight grad: runs, chunks, one position's (O, R) filters, one
 * block of WG_OB of them channel-major, and one position's output gradient (N, O). */
STATIC size_t NAME(patch_scratch)(const lc_job *j)
{
    return (size_t)(j->K + 1 + j->R / VL + j->K + 1) * sizeof(lc_seg) +
           (size_t)((j->O + WG_OB) * j->R + j->c.n * j->O) * sizeof(T);
}

/* dst[0:len] = src[0:len], the whole aligned vectors of dst stored past the caches (store_once). */
INLINE void NAME(copy_once)(T *dst, const T *src, int64_t len)
{
    int64_t e = 0;
    for (; e < len && (uintptr_t)(dst + e) % VB; e++) dst[e] = src[e];
    for (; e + VL <= len; e += VL) NAME(store_once)(dst + e, NAME(load)(src + e));
    for (; e < len; e++) dst[e] = src[e];
}

/* Tile t[i] = row i of a VL x VL block, transposed in registers: log2(VL) rounds of interleaving
 * rows i and i + VL/2 (GCC's __builtin_shuffle with constant masks; elsewhere through memory). */
#if defined(__GNUC__) && !defined(__clang__)
typedef __typeof__((V){0} == (V){0}) NAME(lanes_of);
INLINE void NAME(transpose_tile)(V t[VL])
{
    NAME(lanes_of) lo, hi;
    for (int i = 0; i < VL; i++) {
        lo[i] = i / 2 + (i % 2) * VL;
        hi[i] = VL / 2 + i / 2 + (i % 2) * VL;
    }
    for (int round = 1; round < VL; round *= 2) {
        V u[VL];
        for (int i = 0; i < VL / 2; i++) {
            u[2 * i] = __builtin_shuffle(t[i], t[i + VL / 2], lo);
            u[2 * i + 1] = __builtin_shuffle(t[i], t[i + VL / 2], hi);
        }
        for (int i = 0; i < VL; i++) t[i] = u[i];
    }
}
#else
INLINE void NAME(transpose_tile)(V t[VL])
{
    T m[VL][VL];
    for (int i = 0; i < VL; i++)
        for (int j = 0; j < VL; j++) m[j][i] = t[i][j];
    for (int i = 0; i < VL; i++) memcpy(&t[i], m[i], sizeof(V));
}
#endif

/* dst[j * ds + i] = (or += when `add`) src[i * ss + j] for i < rows, j < cols, in VL x VL tiles.
 * Whole vectors are read below src_end; written whole below dst_end also where lanes past the
 * tile's rows fall on elements that a later store of this call (or of a call for the next
 * matrix, the caller going up) writes: dst rows packed (ds == rows <= VL), no add. */
STATIC void NAME(transpose)(const T *src, int64_t ss, const T *src_end, T *dst, int64_t ds, const T *dst_end,
                            int64_t rows, int64_t cols, int add)
{
    const int spill = !add && ds == rows && rows <= VL;
    for (int64_t j0 = 0; j0 < cols; j0 += VL)
        for (int64_t i0 = 0; i0 < rows; i0 += VL) {
            int64_t ni = lc_min(VL, rows - i0), nj = lc_min(VL, cols - j0);
            V t[VL];
            for (int i = 0; i < VL; i++) {
                const T *s = src + (i0 + lc_min(i, ni - 1)) * ss + j0;
                __builtin_prefetch(s + rows * ss);  /* the next matrix (a caller going up) */
                t[i] = s + VL <= src_end ? NAME(load)(s) : NAME(load_part)(s, nj);
            }
            NAME(transpose_tile)(t);
            for (int64_t j = 0; j < nj; j++) {
                T *d = dst + (j0 + j) * ds + i0;
                if (add && ni == VL) NAME(store)(d, NAME(load)(d) + t[j]);
                else if (add) NAME(store_part)(d, NAME(load_part)(d, ni) + t[j], ni);
                else if (ni == VL || (spill && d + VL <= dst_end)) NAME(store)(d, t[j]);
                else NAME(store_part)(d, t[j], ni);
            }
        }
}

/* (O, Cg, K) -> (O, K, Cg): one position's channel-major filters, kernel-major. */
STATIC void NAME(to_kernel_major)(const T *src, T *dst, int64_t O, int64_t cg, int64_t K)
{
    const T *src_end = src + O * cg * K, *dst_end = dst + O * cg * K;
    for (int64_t o = 0; o < O; o++, src += cg * K, dst += cg * K)
        NAME(transpose)(src, K, src_end, dst, cg, dst_end, cg, K, 0);
}

/* dst (O, R) of either layout = (or +=) src (O, R) kernel-major. */
STATIC void NAME(from_kernel_major)(const T *src, T *dst, int64_t O, int64_t cg, int64_t K, int kernel_major,
                                    int add)
{
    const int64_t R = cg * K;
    const T *src_end = src + O * R, *dst_end = dst + O * R;
    if (kernel_major) {
        for (int64_t e = 0; e < O * R; e++) dst[e] = add ? dst[e] + src[e] : src[e];
        return;
    }
    for (int64_t o = 0; o < O; o++, src += R, dst += R)
        NAME(transpose)(src, cg, src_end, dst, K, dst_end, K, cg, add);
}

/* ------------------------------------------------------------------------------- forward */

/* `first`: the first pass over these filters, which come from memory: prefetched 1 KiB ahead. */
INLINE void NAME(fwd_acc)(V acc[FWD_NB][FWD_OB], const T *const xr[FWD_NB], const T *const wr[FWD_OB],
                          const lc_seg *ch, int64_t c0, int64_t c1, const int partial, const int first, const int NB)
{
    for (int64_t c = c0; c < c1; c++) {
        V wv[FWD_OB];
        for (int j = 0; j < FWD_OB; j++) {
            if (first && !partial) __builtin_prefetch(wr[j] + ch[c].w + 1024 / sizeof(T));
            wv[j] = partial ? NAME(load_part)(wr[j] + ch[c].w, ch[c].len) : NAME(load)(wr[j] + ch[c].w);
        }
        for (int i = 0; i < NB; i++) {
            V xv = partial ? NAME(load_part)(xr[i] + ch[c].x, ch[c].len) : NAME(load)(xr[i] + ch[c].x);
            for (int j = 0; j < FWD_OB; j++) acc[i][j] += xv * wv[j];
        }
    }
}

/* Positions begin..end with tiles of NB samples. */
INLINE int NAME(forward_tiles)(const lc_job *jb, int64_t begin, int64_t end, void *scratch, const int NB)
{
    const lc_call *c = &jb->c;
    const T *x = (const T *)c->x, *w = (const T *)c->w, *b = (const T *)c->b;
    T *y = (T *)c->y;
    const int64_t R = jb->R, O = jb->O, og = c->og, cg = c->cg, n = c->n;
    lc_seg *seg = (lc_seg *)scratch, *ch = seg + jb->K + 1;
    T *stage = (T *)(ch + jb->R / VL + jb->K + 1);
    for (int64_t p = begin; p < end; p++) {
        int64_t o3[3], covered, nfull;
        lc_unravel(p, c->out, o3);
        int64_t nall = NAME(chunks)(seg, lc_segments(jb, o3, seg, &covered), ch, &nfull);
        const T *wp = w + (c->bank ? c->bank[p] : p) * O * R;
        int64_t yoff = o3[0] * c->ys[2] + o3[1] * c->ys[3] + o3[2] * c->ys[4];
        for (int64_t g = 0; g < c->groups; g++) {
            const T *rows = wp + g * og * R;
            if (!c->kernel_major) {  /* this group's filters kernel-major, while they are in the caches */
                NAME(to_kernel_major)(rows, stage, og, cg, jb->K);
                rows = stage;
            }
            /* samples outer: a tile's patch rows stay in L1 while every block of filters passes */
            for (int64_t n0 = 0; n0 < n; n0 += NB) {
                const T *xr[FWD_NB];
                for (int i = 0; i < NB; i++) xr[i] = x + lc_min(n0 + i, n - 1) * c->xs[0] + g * cg;
                for (int64_t o0 = 0; o0 < og; o0 += FWD_OB) {
                    const T *wr[FWD_OB];
                    int64_t valid = lc_min(FWD_OB, og - o0);
                    for (int j = 0; j < FWD_OB; j++) wr[j] = rows + (o0 + lc_min(j, valid - 1)) * R;
                    V acc[FWD_NB][FWD_OB];
                    for (int i = 0; i < NB; i++)
                        for (int j = 0; j < FWD_OB; j++) acc[i][j] = NAME(bcast)(0);
                    if (n0 == 0 && c->kernel_major) NAME(fwd_acc)(acc, xr, wr, ch, 0, nfull, 0, 1, NB);
                    else NAME(fwd_acc)(acc, xr, wr, ch, 0, nfull, 0, 0, NB);
                    NAME(fwd_acc)(acc, xr, wr, ch, nfull, nall, 1, 0, NB);
                    T bias[FWD_OB];  /* added at the store (0 without a bias: y never holds -0) */
                    for (int j = 0; j < FWD_OB; j++)
                        bias[j] = b ? b[lc_bias_at(jb, g * og + o0 + lc_min(j, valid - 1), p)] : 0;
                    for (int i = 0; i < NB; i++)  /* constant indices: acc stays in registers */
                        for (int j = 0; j < FWD_OB; j++)
                            if (i < n - n0 && j < valid)
                                y[(n0 + i) * c->ys[0] + (g * og + o0 + j) * c->ys[1] + yoff] =
                                    NAME(hsum)(acc[i][j]) + bias[j];
                }
            }
        }
    }
    return 0;
}

/* The large tile unless it pads the batch by 10% more rows than the small one (batch 8: 12 rows
 * against 8; batch 64: 66 against 64). */
STATIC int NAME(forward)(const lc_job *jb, int64_t begin, int64_t end, void *scratch)
{
    int64_t n = jb->c.n, large = (n + FWD_NB - 1) / FWD_NB * FWD_NB;
    int64_t small = (n + FWD_NB_SMALL - 1) / FWD_NB_SMALL * FWD_NB_SMALL;
    if (10 * large > 11 * small) return NAME(forward_tiles)(jb, begin, end, scratch, FWD_NB_SMALL);
    return NAME(forward_tiles)(jb, begin, end, scratch, FWD_NB);
}

#include "kernels_wg.h"
#include "kernels_ig.h"
#include "kernels_ig_scatter.h"
#include "kernels_fwd_batch.h"
#include "kernels_rows.h"
#include "kernels_rows_ig.h"

/* LC_HALF: the table of the half-width instantiation (included before this one), or NULL. */
const lc_kernels NAME(kernels) = {NAME(forward), NAME(weight_grad), NAME(input_grad), NAME(transpose_gy),
                                  NAME(forward_rows), NAME(weight_grad_rows), NAME(input_grad_rows),
                                  NAME(input_grad_scatter), NAME(forward_batch), NAME(transpose_x),
                                  NAME(patch_scratch), NAME(rows_scratch), NAME(input_grad_rows_scratch),
                                  NAME(ig_scatter_scratch), NAME(input_grad_scratch), NAME(fwd_batch_scratch), VL,
                                  LC_HALF};

#undef INLINE
#undef STATIC
#undef VL
#undef V
