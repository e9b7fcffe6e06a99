/* The threads of the compiled kernels (included by dispatch.c): the OpenMP runtime that PyTorch
 * loaded, found at run time, or pthreads started per call. See dispatch.c's opening comment. */

typedef struct {
    const lc_job *job;
    lc_range_fn fn;
    int64_t total, chunk;
    size_t scratch;
    atomic_llong next;
    atomic_int error;
} lc_pool;

/* Takes chunks of items until none is left (chunks are contiguous: neighbouring positions share
 * input rows in cache); each item is computed by one thread in a fixed order: results do not
 * depend on the scheduling. */
static void *lc_worker(void *arg)
{
    lc_pool *pool = (lc_pool *)arg;
    void *scratch = pool->scratch ? malloc(pool->scratch) : NULL;
    if (pool->scratch && !scratch) {
        atomic_store(&pool->error, LC_NO_MEMORY);
        return NULL;
    }
    for (;;) {
        int64_t begin = atomic_fetch_add(&pool->next, pool->chunk);
        if (begin >= pool->total || atomic_load(&pool->error)) break;
        int status = pool->fn(pool->job, begin, lc_min(begin + pool->chunk, pool->total), scratch);
        if (status) {
            atomic_store(&pool->error, status);
            break;
        }
    }
    free(scratch);
    return NULL;
}

#ifndef _WIN32
/* GOMP_parallel(fn, data, num_threads, flags): the entry point of `#pragma omp parallel`. */
typedef void (*lc_gomp_parallel)(void (*)(void *), void *, unsigned, unsigned);

static atomic_int lc_prefer_openmp = 1;
/* Set in a child made by fork(): the runtime's threads did not come along (libgomp is not
 * fork-safe: a team whose workers are gone waits for them forever), so the child starts its own. */
static atomic_int lc_forked = 0;

static void lc_after_fork(void) { atomic_store(&lc_forked, 1); }

/* The loaded runtime's GOMP_parallel, or NULL (none loaded, or in a forked child): looked up once. */
static lc_gomp_parallel lc_openmp(void)
{
    static atomic_uintptr_t found = 0;  /* 0: not looked up yet; 1: none */
    uintptr_t f = atomic_load(&found);
    if (!f) {
        void *symbol = dlsym(RTLD_DEFAULT, "GOMP_parallel");
        f = symbol ? (uintptr_t)symbol : 1;
        uintptr_t expected = 0;
        if (atomic_compare_exchange_strong(&found, &expected, f) && f != 1)
            pthread_atfork(NULL, NULL, lc_after_fork);
        f = atomic_load(&found);
    }
    return f == 1 || atomic_load(&lc_forked) ? NULL : (lc_gomp_parallel)f;
}

static void lc_openmp_worker(void *pool) { lc_worker(pool); }
#endif

/* The pool the calls run on: choice 0 asks for pthreads, 1 for the loaded OpenMP runtime, -1
 * changes nothing; returns 1 when the OpenMP runtime is in use, else 0. */
LC_EXPORT int unshared_thread_pool(int choice)
{
#ifdef _WIN32
    (void)choice;
    return 0;
#else
    if (choice == 0 || choice == 1) atomic_store(&lc_prefer_openmp, choice);
    return atomic_load(&lc_prefer_openmp) && lc_openmp() != NULL;
#endif
}

/* fn over items 0..total on up to `threads` threads (the caller is one of them). */
static int lc_run(const lc_job *job, lc_range_fn fn, int64_t total, size_t scratch, int threads)
{
    if (total <= 0) return LC_OK;
    int64_t t = lc_max(1, lc_min(threads, total));
    lc_pool pool = {job, fn, total, lc_max(1, total / (8 * t)), scratch, 0, 0};
#ifndef _WIN32
    lc_gomp_parallel openmp = t > 1 && atomic_load(&lc_prefer_openmp) ? lc_openmp() : NULL;
    if (openmp) {  /* inside another parallel region it runs on the calling thread alone */
        openmp(lc_openmp_worker, &pool, (unsigned)lc_min(t, 256), 0);
        return atomic_load(&pool.error);
    }
#endif
#ifdef _WIN32
    t = 1;
#else
    pthread_t ids[256];
    int started = 0;
    t = lc_min(t, 256);
    while (started < t - 1 && pthread_create(&ids[started], NULL, lc_worker, &pool) == 0) started++;
#endif
    lc_worker(&pool);
#ifndef _WIN32
    for (int i = 0; i < started; i++) pthread_join(ids[i], NULL);
#endif
    return atomic_load(&pool.error);
}
