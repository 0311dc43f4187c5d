/* ---- exact full-ranking counts -------------------------------------------------------------------
 * For each user b: how many items v in [1, num_items) score strictly above the target (counts) and
 * how many other items score exactly the same (ties; the target itself not counted), seen items (CSR
 * seen_offsets / seen_items) never counted. score(v, b) = items[v] . users[b], each a chain of FMAs
 * over the D dimensions in order, the same arithmetic for every (v, b) whatever its tile or lane, so
 * the target's own score (computed first, by the same tile code) is bit-identical to its entry in the
 * scored chunk. The caller guarantees finite scores (recsys.metrics.check_finite). */
#define RANK_CHUNK 1024
#define RANK_GROUP 8 /* at most this many tiles of users share a pass over the items */

typedef struct {
    int num_users, dim, num_items, items_stride, num_threads;
    const float *users, *items_t;   /* [B, D]; items transposed [D, items_stride] */
    const int64_t *targets, *seen_offsets, *seen_items;
    int64_t *counts, *ties;
    int group;      /* tiles per unit of work */
    int next_tile;
} RankJob;

static void *rank_worker(void *arg) {
    RankJob *job = (RankJob *)arg;
    unsigned csr = flush_denormals();
    int D = job->dim, V = job->num_items, ld = job->items_stride, G = job->group;
    float *scores = scratch_acquire(1, QUERY_TILE * RANK_CHUNK);
    float one[16], target_score[RANK_GROUP][QUERY_TILE];
    int64_t count[RANK_GROUP][QUERY_TILE], tied[RANK_GROUP][QUERY_TILE];
    if (!scores) { restore_denormals(csr); return (void *)1; }
    for (;;) { /* a unit: G tiles of 6 users, which share each chunk of items while it is in L2 */
        int first = __atomic_fetch_add(&job->next_tile, G, __ATOMIC_RELAXED);
        if (first * QUERY_TILE >= job->num_users) break;
        int tiles = 0;
        for (int g = 0; g < G && (first + g) * QUERY_TILE < job->num_users; g++, tiles++) {
            int b0 = (first + g) * QUERY_TILE;
            int rows = job->num_users - b0 < QUERY_TILE ? job->num_users - b0 : QUERY_TILE;
            for (int r = 0; r < rows; r++) { /* the target's 16-column block, one row: the same lane arithmetic */
                int64_t t = job->targets[b0 + r], block = t & ~15L;
                rows_of(1, 16, D, job->users + (long)(b0 + r) * D, D, job->items_t + block, ld, NULL, one, 16, 0);
                target_score[g][r] = one[t - block];
                count[g][r] = 0;
                tied[g][r] = 0;
            }
        }
        for (int c0 = 0; c0 < V; c0 += RANK_CHUNK) {
            int width = V - c0 < RANK_CHUNK ? V - c0 : RANK_CHUNK;
            int cols = (width + 15) & ~15; /* items_stride is a multiple of 16 with zero columns past V */
            for (int g = 0; g < tiles; g++) {
                int b0 = (first + g) * QUERY_TILE;
                int rows = job->num_users - b0 < QUERY_TILE ? job->num_users - b0 : QUERY_TILE;
                gemm(rows, cols, D, job->users + (long)b0 * D, D, job->items_t + c0, ld, NULL, scores, RANK_CHUNK, 0);
                for (int r = 0; r < rows; r++) {
                    float *s = scores + (long)r * RANK_CHUNK;
                    int64_t b = b0 + r, t = job->targets[b];
                    for (int64_t i = job->seen_offsets[b]; i < job->seen_offsets[b + 1]; i++) {
                        int64_t v = job->seen_items[i] - c0;
                        if (v >= 0 && v < width) s[v] = -INFINITY;
                    }
                    if (c0 == 0) s[0] = -INFINITY; /* the padding id */
                    if (t >= c0 && t < c0 + width) s[t - c0] = -INFINITY; /* not one of the "others" */
                    float ts = target_score[g][r];
                    int32_t n = 0, e = 0; /* 32-bit lanes: both counts in one vectorised pass (width <= RANK_CHUNK) */
                    for (int j = 0; j < width; j++) {
                        n += s[j] > ts;
                        e += s[j] == ts;
                    }
                    count[g][r] += n;
                    tied[g][r] += e;
                }
            }
        }
        for (int g = 0; g < tiles; g++) {
            int b0 = (first + g) * QUERY_TILE;
            int rows = job->num_users - b0 < QUERY_TILE ? job->num_users - b0 : QUERY_TILE;
            for (int r = 0; r < rows; r++) {
                job->counts[b0 + r] = count[g][r];
                job->ties[b0 + r] = tied[g][r];
            }
        }
    }
    scratch_release(scores);
    restore_denormals(csr);
    return NULL;
}

/* Returns 0 on success. config: num_users, dim, num_items, items_stride, num_threads. */
int recsys_rank_counts(const int32_t *config, const float *users, const float *items_t, const int64_t *targets,
                       const int64_t *seen_offsets, const int64_t *seen_items, int64_t *counts, int64_t *ties) {
    RankJob job;
    job.num_users = config[0]; job.dim = config[1]; job.num_items = config[2]; job.items_stride = config[3];
    job.num_threads = config[4] < 1 ? 1 : config[4];
    job.users = users; job.items_t = items_t; job.targets = targets;
    job.seen_offsets = seen_offsets; job.seen_items = seen_items; job.counts = counts; job.ties = ties;
    job.next_tile = 0;
    if (job.items_stride % 16 || job.items_stride < job.num_items) return 2;
    for (int b = 0; b < job.num_users; b++)
        if (targets[b] < 0 || targets[b] >= job.num_items) return 3;
    int tiles = (job.num_users + QUERY_TILE - 1) / QUERY_TILE;
    /* up to RANK_GROUP tiles per unit (each chunk of items read from memory once per unit, not per
     * tile), with at least ~4 units per thread; the group does not change any score's arithmetic */
    job.group = tiles / (4 * job.num_threads);
    job.group = job.group < 1 ? 1 : job.group > RANK_GROUP ? RANK_GROUP : job.group;
    int units = (tiles + job.group - 1) / job.group;
    return run_threads(rank_worker, &job, job.num_threads < units ? job.num_threads : units);
}
