/* Copies of x in the layouts that the kernels read, made per call by the dispatcher (included by
 * dispatch.c): channels-last for the channel path, phases apart for the rows path with a stride. */

/* Rows (n, d, h) of x copied into j->c.x's channels-last buffer, whole vectors of w at a time. */
#define LC_TO_CHANNELS_LAST(name, E)                                                               \
    static int name(const lc_job *j, int64_t begin, int64_t end, void *scratch)                    \
    {                                                                                              \
        (void)scratch;                                                                             \
        const lc_call *c = &j->c;                                                                  \
        const E *src = (const E *)j->source;                                                       \
        E *dst = (E *)c->x;                                                                        \
        int64_t C = c->groups * c->cg, W = c->in[2];                                               \
        for (int64_t row = begin; row < end; row++) {                                              \
            int64_t h = row % c->in[1], d = row / c->in[1] % c->in[0], n = row / (c->in[1] * c->in[0]); \
            const E *s = src + n * j->ss[0] + d * j->ss[2] + h * j->ss[3];                         \
            E *t = dst + row * W * C;                                                              \
            for (int64_t w0 = 0; w0 < W; w0 += 16)                                                 \
                for (int64_t ch = 0; ch < C; ch++)                                                 \
                    for (int64_t w = w0; w < lc_min(w0 + 16, W); w++)                              \
                        t[w * C + ch] = s[ch * j->ss[1] + w * j->ss[4]];                           \
        }                                                                                          \
        return 0;                                                                                  \
    }
LC_TO_CHANNELS_LAST(lc_to_channels_last32, uint32_t)
LC_TO_CHANNELS_LAST(lc_to_channels_last64, uint64_t)

/* Gives job->c.x a channel stride of 1: x itself, or a channels-last copy in *block (to free). */
static int lc_channel_inner(lc_job *j, int dtype, int threads, void **block)
{
    lc_call *c = &j->c;
    *block = NULL;
    if (c->xs[1] == 1) return LC_OK;
    int64_t C = c->groups * c->cg, rows = c->n * c->in[0] * c->in[1];
    size_t item = dtype == LC_FLOAT32 ? 4 : 8;
    void *copy = lc_alloc_lines((size_t)(rows * c->in[2] * C) * item, block);
    if (!copy) return LC_NO_MEMORY;
    j->source = c->x;
    memcpy(j->ss, c->xs, sizeof(j->ss));
    c->x = copy;
    c->xs[4] = C;
    c->xs[3] = C * c->in[2];
    c->xs[2] = c->xs[3] * c->in[1];
    c->xs[0] = c->xs[2] * c->in[0];
    c->xs[1] = 1;
    j->merged = c->groups == 1 && c->dil[2] == 1;
    return lc_run(j, item == 4 ? lc_to_channels_last32 : lc_to_channels_last64, rows, 0, threads);
}

/* Rows (n, c, d, h) of x copied phases apart: row[ph * len + m] = x[ph + s * m] (zeros past the row),
 * s = j->split, len = j->split_len. */
#define LC_PHASES_APART(name, E)                                                                   \
    static int name(const lc_job *j, int64_t begin, int64_t end, void *scratch)                    \
    {                                                                                              \
        (void)scratch;                                                                             \
        const lc_call *c = &j->c;                                                                  \
        const E *src = (const E *)j->source;                                                       \
        const int64_t s = j->split, len = j->split_len, W = j->split_w;                           \
        const int64_t C = c->groups * c->cg;                                                       \
        for (int64_t row = begin; row < end; row++) {                                              \
            int64_t h = row % c->in[1], d = row / c->in[1] % c->in[0], ch = row / (c->in[1] * c->in[0]) % C; \
            int64_t n = row / (c->in[1] * c->in[0] * C);                                           \
            const E *r = src + n * j->ss[0] + ch * j->ss[1] + d * j->ss[2] + h * j->ss[3];         \
            E *t = (E *)c->x + row * s * len;                                                      \
            for (int64_t ph = 0; ph < s; ph++)                                                     \
                for (int64_t m = 0; m < len; m++)                                                  \
                    t[ph * len + m] = ph + s * m < W ? r[(ph + s * m) * j->ss[4]] : (E)0;          \
        }                                                                                          \
        return 0;                                                                                  \
    }
LC_PHASES_APART(lc_phases_apart32, uint32_t)
LC_PHASES_APART(lc_phases_apart64, uint64_t)

/* With a stride s along w, gives the rows path's job an x whose lanes are one plain load: a copy
 * with each row's s phases apart (x itself, stride 1, otherwise), in *block (to free). The copy
 * stands for an input of stride 1 along w, rows s * len long; lc_taps maps each kernel offset to
 * its phase. */
static int lc_phases_apart(lc_job *j, int dtype, int threads, void **block)
{
    lc_call *c = &j->c;
    *block = NULL;
    if (c->s[2] == 1) return LC_OK;
    int64_t s = c->s[2], len = (c->in[2] + s - 1) / s, C = c->groups * c->cg, rows = c->n * C * c->in[0] * c->in[1];
    size_t item = dtype == LC_FLOAT32 ? 4 : 8;
    void *copy = lc_alloc_lines((size_t)(rows * s * len) * item, block);
    if (!copy) return LC_NO_MEMORY;
    j->source = c->x;
    memcpy(j->ss, c->xs, sizeof(j->ss));
    j->split = s;
    j->split_len = len;
    j->split_w = c->in[2];
    c->x = copy;
    c->xs[4] = 1;
    c->xs[3] = s * len;
    c->xs[2] = c->xs[3] * c->in[1];
    c->xs[1] = c->xs[2] * c->in[0];
    c->xs[0] = c->xs[1] * C;
    c->in[2] = len;
    c->s[2] = 1;
    c->x_extent = rows * s * len;
    return lc_run(j, item == 4 ? lc_phases_apart32 : lc_phases_apart64, rows, 0, threads);
}
