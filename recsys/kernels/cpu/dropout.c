/* ---- dropout keep masks ------------------------------------------------------------------------
 * out[e] = scale where 16 random bits of element e are >= threshold, else 0 (dropped with probability
 * threshold / 65536). Word w (elements 4w .. 4w + 3) is splitmix64's output for state seed + w * 2^64 / phi:
 * a counter-based generator, so each element's bits depend on (seed, e) alone, never on the threads
 * or the order; one pass writes the float mask (torch's generator drew the words one by one on one
 * core, and two more passes compared and converted them). */
#define MASK_CHUNK 65536

typedef struct {
    uint64_t seed;
    long n;
    uint32_t threshold;
    float scale;
    float *out;
    long next;
} MaskJob;

static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void *mask_worker(void *arg) {
    MaskJob *job = (MaskJob *)arg;
    for (;;) {
        long e0 = __atomic_fetch_add(&job->next, MASK_CHUNK, __ATOMIC_RELAXED);
        if (e0 >= job->n) break;
        long e1 = job->n - e0 < MASK_CHUNK ? job->n : e0 + MASK_CHUNK;
        for (long e = e0; e < e1; e += 4) { /* MASK_CHUNK is a multiple of 4: e is a word's first element */
            uint64_t bits = splitmix64(job->seed + (uint64_t)(e / 4) * 0x9E3779B97F4A7C15ULL);
            for (int k = 0; k < 4 && e + k < e1; k++)
                job->out[e + k] = ((bits >> (16 * k)) & 0xFFFF) >= job->threshold ? job->scale : 0.0f;
        }
    }
    return NULL;
}

/* Returns 0 on success. config: num_threads; n elements, threshold in [0, 65536], seed, scale. */
int recsys_keep_mask(const int32_t *config, const int64_t *n, const int64_t *threshold, const uint64_t *seed,
                     const float *scale, float *out) {
    MaskJob job;
    job.seed = seed[0]; job.n = n[0]; job.threshold = (uint32_t)threshold[0]; job.scale = scale[0];
    job.out = out; job.next = 0;
    if (job.n < 0 || threshold[0] < 0 || threshold[0] > 65536) return 2;
    long chunks = (job.n + MASK_CHUNK - 1) / MASK_CHUNK;
    int threads = config[0] < 1 ? 1 : config[0];
    return run_threads(mask_worker, &job, threads < chunks ? threads : (int)(chunks < 1 ? 1 : chunks));
}
