/* The checks of csrc/sparse.c (included there once, after sp_call): every size, every run and slot
 * of the plan against the extents, and the memory of x, y and w, before any kernel runs. */
static int sp_inside(const int64_t size[3], const int64_t stride[3], int64_t extent)
{
    int64_t last = 0, term;
    for (int d = 0; d < 3; d++)
        if (stride[d] < 0 || __builtin_mul_overflow(size[d] - 1, stride[d], &term) ||
            __builtin_add_overflow(last, term, &last))
            return 0;
    return last < extent;
}

/* A run (i0, e0, len, j) lies inside the inputs, the edges and the outputs. */
static int sp_run_ok(const int64_t *r, const sp_call *c)
{
    int64_t end;
    return r[2] >= 1 && r[0] >= 0 && !__builtin_add_overflow(r[0], r[2], &end) && end <= c->in && r[1] >= 0 &&
           !__builtin_add_overflow(r[1], r[2], &end) && end <= c->nnz && r[3] >= 0 && r[3] < c->out;
}

static int sp_check(const sp_call *c, int dtype)
{
    if (dtype != LC_FLOAT32 && dtype != LC_FLOAT64) return LC_BAD_ARGUMENT;
    if (c->n <= 0 || c->c <= 0 || c->o <= 0 || c->in <= 0 || c->out <= 0 || c->nnz <= 0 || c->nruns < 0 ||
        c->block_size <= 0 || c->xs[2] != 1 || !c->row || !c->runs || !c->col || !c->slots)
        return LC_BAD_ARGUMENT;
    int64_t w_size;
    if (__builtin_mul_overflow(c->o, c->c, &w_size) || __builtin_mul_overflow(w_size, c->nnz, &w_size))
        return LC_TOO_LARGE;
    const int64_t xsize[3] = {c->n, c->c, c->in}, ysize[3] = {c->n, c->o, c->out};
    if (!c->x || !sp_inside(xsize, c->xs, c->x_extent)) return LC_BAD_X;
    if (!c->y || !sp_inside(ysize, c->ys, c->y_extent)) return LC_BAD_Y;
    if (!c->w || w_size > c->w_extent) return LC_BAD_W;
    if (c->row[0] != 0 || c->row[c->out] != c->nruns) return LC_BAD_BANK;
    for (int64_t j = 0; j < c->out; j++) {
        if (c->row[j + 1] < c->row[j] || c->row[j + 1] > c->nruns) return LC_BAD_BANK;
        for (int64_t r = c->row[j]; r < c->row[j + 1]; r++)
            if (!sp_run_ok(c->runs + 4 * r, c) || c->runs[4 * r + 3] != j) return LC_BAD_BANK;
    }
    if (c->blocks != c->in / c->block_size + (c->in % c->block_size != 0) || c->col[0] != 0 || c->col[c->in] != c->nnz)
        return LC_BAD_BANK;
    for (int64_t i = 0; i < c->in; i++) {
        if (c->col[i + 1] < c->col[i] || c->col[i + 1] > c->nnz) return LC_BAD_BANK;
        for (int64_t k = c->col[i]; k < c->col[i + 1]; k++)
            if (c->slots[2 * k] < 0 || c->slots[2 * k] >= c->nnz || c->slots[2 * k + 1] < 0 ||
                c->slots[2 * k + 1] >= c->out)
                return LC_BAD_BANK;
    }
    return LC_OK;
}
