/* ---- bf16 full CE on CPUs with bf16 units: the elementwise pass between the products ----------------
 * The bf16 path of recsys.losses.full_ce.ChunkedSoftmaxCE leaves the three products to oneDNN (AMX / AVX512-BF16
 * there); between them each [V, c] block of bf16 logits was exponentiated by one torch op and summed per
 * column by another, two passes over the block that cost more than the three products together at
 * Beauty's shape on bf16 hardware.
 * Here it is one pass: each value widened to fp32, shifted (by its column's max, where one is given),
 * exponentiated, rounded to bf16 in place (to nearest, ties to even) and added to its column's fp32 sum
 * (the unrounded value: a more exact sum than the bf16 reduction it replaces). Rows go in chunks of
 * BF16_ROWS with a partial sum each, added in chunk order afterwards: the same bits for any number of
 * threads. Inputs above 88 are clamped (e^88 ~ 2^127): a column whose sum reaches 2^120 is reported as
 * such and the caller redoes it shifted. */
#define BF16_ROWS 256

/* the pass runs in 16-lane vectors where the CPU has AVX-512, else 8 */
#if defined(__AVX512F__)
typedef uint16_t bf_vh __attribute__((vector_size(32)));
typedef v16 bf_vf;
typedef v16i bf_vi;
#define BF_LANES 16
#define bf_ld ld16
#define bf_st st16
#define bf_exp vexp16
#else
typedef uint16_t bf_vh __attribute__((vector_size(16)));
typedef v8 bf_vf;
typedef v8i bf_vi;
#define BF_LANES 8
#define bf_ld ld
#define bf_st st
#define bf_exp vexp
#endif

static inline bf_vf bf16_widen(const uint16_t *p) {
#if BF_LANES == 16
    return (v16)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#else
    bf_vh h;
    bf_vf v;
    __builtin_memcpy(&h, p, sizeof h);
    bf_vi w = __builtin_convertvector(h, bf_vi) << 16;
    __builtin_memcpy(&v, &w, sizeof v);
    return v;
#endif
}

/* fp32 bits -> bf16 bits, to nearest, ties to even (no NaN reaches here); scalar or vector lanes */
#define BF16_ROUND(b) (((b) + 0x7FFF + (((b) >> 16) & 1)) >> 16)

static inline void bf16_store(uint16_t *p, bf_vf v) {
#if BF_LANES == 16 && defined(__AVX512BF16__)
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh((__m512)v)); /* to nearest, ties to even */
#else
    bf_vi b;
    __builtin_memcpy(&b, &v, sizeof b);
    bf_vh h = __builtin_convertvector(BF16_ROUND(b), bf_vh);
    __builtin_memcpy(p, &h, sizeof h);
#endif
}

static inline uint16_t bf16_of(float x) {
    uint32_t b;
    __builtin_memcpy(&b, &x, sizeof b);
    return (uint16_t)BF16_ROUND(b);
}

typedef struct {
    long rows, cols;
    uint16_t *block;    /* [rows, cols] bf16, exponentiated in place */
    const float *shift; /* [cols] or NULL */
    float *partial;     /* [chunks, cols] */
    long next;
} Bf16ExpJob;

static void *bf16_exp_worker(void *arg) {
    Bf16ExpJob *job = (Bf16ExpJob *)arg;
    unsigned csr = flush_denormals();
    const long C = job->cols, CV = C / BF_LANES * BF_LANES;
    for (;;) {
        long chunk = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED), r0 = chunk * BF16_ROWS;
        if (r0 >= job->rows) break;
        long r1 = job->rows - r0 < BF16_ROWS ? job->rows : r0 + BF16_ROWS;
        float *sum = job->partial + chunk * C;
        memset(sum, 0, sizeof(float) * C);
        for (long r = r0; r < r1; r++) {
            uint16_t *row = job->block + r * C;
            long j = 0;
            for (; j < CV; j += BF_LANES) {
                bf_vf x = bf16_widen(row + j);
                if (job->shift) x -= bf_ld(job->shift + j);
                bf_vf e = bf_exp(x);
                bf16_store(row + j, e);
                bf_st(sum + j, bf_ld(sum + j) + e);
            }
            for (; j < C; j++) {
                uint32_t b = (uint32_t)row[j] << 16;
                float x;
                __builtin_memcpy(&x, &b, sizeof x);
                float e = sexp(job->shift ? x - job->shift[j] : x);
                row[j] = bf16_of(e);
                sum[j] += e;
            }
        }
    }
    restore_denormals(csr);
    return NULL;
}

/* Returns 0 on success. config: rows, cols, num_threads; col_sum [cols] is written. */
int recsys_bf16_exp_colsum(const int64_t *config, uint16_t *block, const float *shift, float *col_sum) {
    Bf16ExpJob job = {config[0], config[1], block, shift, NULL, 0};
    if (job.rows < 1 || job.cols < 1) return 2;
    long chunks = (job.rows + BF16_ROWS - 1) / BF16_ROWS;
    job.partial = malloc(sizeof(float) * chunks * job.cols);
    if (!job.partial) return 1;
    int threads = config[2] < 1 ? 1 : (int)config[2];
    int failed = run_threads(bf16_exp_worker, &job, threads < chunks ? threads : (int)chunks);
    for (long j = 0; j < job.cols; j++) col_sum[j] = 0.0f;
    for (long c = 0; c < chunks; c++)
        for (long j = 0; j < job.cols; j++) col_sum[j] += job.partial[c * job.cols + j];
    free(job.partial);
    return failed;
}
