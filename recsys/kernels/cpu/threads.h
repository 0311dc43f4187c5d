/* Denormal flushing while a kernel runs, and the threads kernels run on (torch's OpenMP pool or threads
 * of their own) with their per-thread scratch. Included once, by ../cpu_kernels.c. */

/* Denormal results (attention weights near exp(-87) times small values) take microcode assists that
 * cost ~100 cycles each; flushed to zero they change nothing at fp32 resolution. Set for this thread
 * while it works, restored after (the calling thread is Python's). */
static unsigned flush_denormals(void) {
#if defined(__SSE__)
    unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040); /* FTZ | DAZ */
    return saved;
#else
    return 0;
#endif
}

static void restore_denormals(unsigned saved) {
#if defined(__SSE__)
    _mm_setcsr(saved);
#else
    (void)saved;
#endif
}

/* Threads and their scratch. recsys/kernels/cpu_build.py hands over GOMP_parallel of the OpenMP
 * runtime (GNU libgomp) that torch runs its thread pool on, where there is one: the work then runs on
 * torch's own threads, whose workers, spinning a while after each torch op, pick it up at once instead
 * of competing for the cores with threads of ours, and each keeps its scratch from one call to the
 * next. Otherwise pthreads are started per call and scratch is allocated per call. */
typedef void (*ParallelFn)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
static ParallelFn pool_parallel = NULL; /* libgomp's GOMP_parallel (its ABI since GCC 4.9) or NULL */

void recsys_use_thread_pool(void *gomp_parallel) { pool_parallel = (ParallelFn)gomp_parallel; }
int recsys_uses_thread_pool(void) { return pool_parallel != NULL; }

static __thread float *cached_scratch[3];
static __thread size_t cached_floats[3];

/* `floats` zeroed floats of scratch: on the pool, this thread's `slot` (0: encoder, 1: ranking, 2:
 * cross-entropy), kept across calls; on threads of ours, allocated (scratch_release frees it) */
static float *scratch_acquire(int slot, size_t floats) {
    if (!pool_parallel) return calloc(floats, sizeof(float));
    if (floats > cached_floats[slot]) {
        free(cached_scratch[slot]);
        cached_scratch[slot] = malloc(floats * sizeof(float));
        cached_floats[slot] = cached_scratch[slot] ? floats : 0;
    }
    if (cached_scratch[slot]) memset(cached_scratch[slot], 0, floats * sizeof(float));
    return cached_scratch[slot];
}
static void scratch_release(float *mem) {
    if (!pool_parallel) free(mem);
}

typedef struct {
    void *(*fn)(void *);
    void *job;
    int failed;
} PoolTask;

static void pool_task(void *arg) {
    PoolTask *task = (PoolTask *)arg;
    if (task->fn(task->job) != NULL) __atomic_store_n(&task->failed, 1, __ATOMIC_RELAXED);
}

/* fn(job) on `threads` threads (at most 64 of ours), the calling thread one of them (work is shared
 * through the job's atomic counter, so fewer threads than asked still do all of it); 1 if any failed */
static int run_threads(void *(*fn)(void *), void *job, int threads) {
    if (threads <= 1) return fn(job) != NULL;
    if (pool_parallel) {
        PoolTask task = {fn, job, 0};
        pool_parallel(pool_task, &task, (unsigned)threads, 0);
        return task.failed;
    }
    pthread_t tids[64];
    if (threads > 64) threads = 64;
    int failed = 0, started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&tids[t], NULL, fn, job) != 0) break;
        started = t;
    }
    if (fn(job) != NULL) failed = 1;
    for (int t = 1; t <= started; t++) {
        void *ret;
        pthread_join(tids[t], &ret);
        if (ret != NULL) failed = 1;
    }
    return failed;
}
