/* The FMA peak of this CPU: a microbenchmark built beside the kernels, one loop per instruction set
 * and dtype, that the benchmark harness times to get the cores' compute limit (the roofline
 * floor's flops rate: benchmarks/README.md) instead of the rate one BLAS happens to reach.
 *
 * Each thread runs LC_PEAK_CHAINS independent chains of vector fused multiply-adds,
 * acc = acc * mul + add, `iterations` times: 12 chains cover an FMA latency of 4-6 cycles on two
 * pipes, so the loop is bound by the FMA throughput alone (no loads, no stores). The chains' final
 * values are summed into a checksum that the caller gets back, so the compiler cannot drop the loop.
 * The values: lane l of chain c on thread t starts at t + c + l + 1, mul = 0.5, add = 1 (passed at
 * run time, so nothing folds); a few steps are exact in float32, which lets a test compute the same
 * checksum in Python. The portable loop uses the compiler's 128-bit vector extensions (a multiply
 * and an add where the target has no FMA: the same flops, at the rate the portable kernels see).
 *
 * Threads: pthreads started per call and joined before it returns (the caller is thread 0).
 */
#include <stdlib.h>

#include "unshared_cpu.h"

#ifdef _WIN32
#define LC_PEAK_EXPORT __declspec(dllexport)
#else
#include <pthread.h>
#define LC_PEAK_EXPORT __attribute__((visibility("default")))
#endif

#ifdef LC_X86
#include <immintrin.h>
#endif

#define LC_PEAK_CHAINS 12
#define LC_PEAK_MAX_THREADS 256

typedef struct {
    int isa, dtype;
    int64_t iterations, thread;
    double mul, add;   /* 0.5 and 1: given at run time, so the compiler cannot fold them */
    double sum;        /* out: the sum of every lane of every chain */
} lc_peak_task;

/* The chains' loop for one vector type: V the vector, L its lanes, SET1 broadcast, FMA(a, b, c) =
 * a * b + c, STORE to an array of L scalars. */
#define LC_PEAK_BODY(S, V, L, SET1, FMA, STORE)                                                \
    {                                                                                          \
        V acc[LC_PEAK_CHAINS], m = SET1((S)task->mul), a = SET1((S)task->add);                 \
        S init[L];                                                                             \
        for (int c = 0; c < LC_PEAK_CHAINS; c++) {                                             \
            for (int l = 0; l < (L); l++) init[l] = (S)(task->thread + c + l + 1);             \
            memcpy(&acc[c], init, sizeof init);                                                \
        }                                                                                      \
        for (int64_t i = 0; i < task->iterations; i++)                                         \
            for (int c = 0; c < LC_PEAK_CHAINS; c++) /* unrolled: the chains stay in registers */ \
                acc[c] = FMA(acc[c], m, a);                                                    \
        double sum = 0;                                                                        \
        for (int c = 0; c < LC_PEAK_CHAINS; c++) {                                             \
            STORE(init, acc[c]);                                                               \
            for (int l = 0; l < (L); l++) sum += (double)init[l];                              \
        }                                                                                      \
        task->sum = sum;                                                                       \
    }

/* ---- portable: 128-bit vectors of the compiler's vector extensions */
typedef float lc_peak_v4f __attribute__((vector_size(16)));
typedef double lc_peak_v2d __attribute__((vector_size(16)));
#define LC_PEAK_SET_V4F(s) ((lc_peak_v4f){(s), (s), (s), (s)})
#define LC_PEAK_SET_V2D(s) ((lc_peak_v2d){(s), (s)})
#define LC_PEAK_MADD(a, b, c) ((a) * (b) + (c))
#define LC_PEAK_STORE_VEC(p, v) memcpy((p), &(v), sizeof(v))

static void lc_peak_portable_f32(lc_peak_task *task)
LC_PEAK_BODY(float, lc_peak_v4f, 4, LC_PEAK_SET_V4F, LC_PEAK_MADD, LC_PEAK_STORE_VEC)
static void lc_peak_portable_f64(lc_peak_task *task)
LC_PEAK_BODY(double, lc_peak_v2d, 2, LC_PEAK_SET_V2D, LC_PEAK_MADD, LC_PEAK_STORE_VEC)

#ifdef LC_X86
/* ---- AVX2 + FMA: 256-bit vectors (12 chains + 2 constants of 16 registers) */
__attribute__((target("avx2,fma"))) static void lc_peak_avx2_f32(lc_peak_task *task)
LC_PEAK_BODY(float, __m256, 8, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps)
__attribute__((target("avx2,fma"))) static void lc_peak_avx2_f64(lc_peak_task *task)
LC_PEAK_BODY(double, __m256d, 4, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_storeu_pd)

/* ---- AVX-512: 512-bit vectors */
__attribute__((target("avx512f,avx512vl,avx2,fma"))) static void lc_peak_avx512_f32(lc_peak_task *task)
LC_PEAK_BODY(float, __m512, 16, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps)
__attribute__((target("avx512f,avx512vl,avx2,fma"))) static void lc_peak_avx512_f64(lc_peak_task *task)
LC_PEAK_BODY(double, __m512d, 8, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_storeu_pd)
#endif

/* The lanes of one vector of `isa` in `dtype`. */
static int64_t lc_peak_lanes(int isa, int dtype)
{
    int64_t bytes = isa == LC_AVX512 ? 64 : isa == LC_AVX2 ? 32 : 16;
    return bytes / (dtype == LC_FLOAT32 ? 4 : 8);
}

static void *lc_peak_thread(void *arg)
{
    lc_peak_task *task = (lc_peak_task *)arg;
    int f32 = task->dtype == LC_FLOAT32;
    switch (task->isa) {
#ifdef LC_X86
    case LC_AVX512:
        if (f32) lc_peak_avx512_f32(task); else lc_peak_avx512_f64(task);
        break;
    case LC_AVX2:
        if (f32) lc_peak_avx2_f32(task); else lc_peak_avx2_f64(task);
        break;
#endif
    default:
        if (f32) lc_peak_portable_f32(task); else lc_peak_portable_f64(task);
    }
    return NULL;
}

/* Runs the chains of `isa` (LC_PORTABLE, LC_AVX2, LC_AVX512) in `dtype` on `threads` threads,
 * `iterations` steps each; sets *checksum to the sum of every final value (over threads, chains and
 * lanes, in that order) and *flops to the floating-point operations done (2 per lane and step).
 * Returns LC_OK, LC_BAD_ARGUMENT (an ISA this CPU lacks, a bad dtype, threads outside 1..256,
 * iterations < 0) or LC_NO_MEMORY; time the call from outside for the rate. */
LC_PEAK_EXPORT int unshared_fma_peak(int isa, int dtype, int threads, int64_t iterations, double *checksum,
                                     int64_t *flops)
{
    if (!unshared_isa_supported(isa) || (dtype != LC_FLOAT32 && dtype != LC_FLOAT64) || threads < 1 ||
        threads > LC_PEAK_MAX_THREADS || iterations < 0 || !checksum || !flops)
        return LC_BAD_ARGUMENT;
    lc_peak_task *tasks = (lc_peak_task *)calloc((size_t)threads, sizeof *tasks);
    if (!tasks) return LC_NO_MEMORY;
    for (int t = 0; t < threads; t++)
        tasks[t] = (lc_peak_task){isa, dtype, iterations, t, 0.5, 1.0, 0.0};
    int started = 1;
#ifndef _WIN32
    pthread_t ids[LC_PEAK_MAX_THREADS];
    while (started < threads && pthread_create(&ids[started], NULL, lc_peak_thread, &tasks[started]) == 0)
        started++;
#endif
    lc_peak_thread(&tasks[0]);
#ifndef _WIN32
    for (int t = 1; t < started; t++) pthread_join(ids[t], NULL);
#endif
    int status = started == threads ? LC_OK : LC_NO_MEMORY;  /* a thread that could not start */
    double sum = 0;
    for (int t = 0; t < started; t++) sum += tasks[t].sum;
    free(tasks);
    *checksum = sum;
    *flops = (int64_t)threads * iterations * LC_PEAK_CHAINS * lc_peak_lanes(isa, dtype) * 2;
    return status;
}
