/* ---- full-softmax cross-entropy: loss and both gradients ----------------------------------------
 * Logits l[v, p] = items[v] . hidden[p] over every item v < V for positions p < P (positions padded
 * to a multiple of CE_POSITIONS with zero rows), never stored beyond one tile in cache:
 *
 *   phase 1, work units of CE_POSITIONS positions x one slice of the catalogue, shared among threads:
 *     the slice in tiles of CE_ITEMS items; online log-sum-exp per position (running max m_p,
 *     S_p = sum exp(l - m_p)) and G_p = sum_v exp(l[v, p] - m_p) items[v], both rescaled when m_p
 *     grows (as flash attention does). The slices of a position block are then merged:
 *     lse_p = m_p + log S_p, loss_p = lse_p - l[target_p, p], grad_hidden[p] = scale (G_p / S_p - items[target_p]);
 *   phase 2, item gradients, grad_items[v] = sum_p g[v, p] hidden[p] with
 *     g[v, p] = scale (exp(l[v, p] - lse_p) - [v == target_p]), items shared among threads, either
 *   - kept (three products): phase 1 also keeps its exponentials exp(l[v, p] - m_p) (streamed to
 *     memory, bypassing the caches) and the m_p each tile used, for one group of positions at a time
 *     (as many as fit in CE_KEPT_FLOATS, at least CE_KEPT_MIN or all of them; the groups run phase 1
 *     then phase 2 in turn, grad_items accumulating over groups). Per tile of CE_ITEMS items the
 *     factor scale exp(m_p - lse_p) goes onto the group's hidden rows (a [group, D] copy in cache),
 *     so phase 2 is one product reading the kept values as they are; the targets' -scale hidden[p]
 *     is added to row target_p at the end. The kept buffer stays allocated between calls (page
 *     faults on tens of MB each step are not free). Beauty's shape (720 positions x 54,542 items):
 *     groups of 192 positions (144 the last), 42 MB kept, faster than recomputing;
 *   - or recomputed (four products, for catalogues too large to keep CE_KEPT_MIN positions): in
 *     blocks of CE_POSITIONS items, the logits recomputed tile by tile (CE_ITEMS positions at a time)
 *     and g formed in cache.
 *
 * No [V, P] block in memory beyond the kept group: every operand of a tile is in L1 / L2 cache, and
 * each unit owns the rows it writes (no atomics; the result does not depend on the number of threads,
 * the groups depend on the sizes alone). Slices keep phase 1 balanced when there are few position
 * blocks (720 positions: 15 blocks, 45 units). */
#ifndef CE_POSITIONS
#define CE_POSITIONS 48
#endif
#ifndef CE_ITEMS
#define CE_ITEMS 96
#endif
#define CE_MAX_SLICES 8
#ifndef CE_KEPT_FLOATS
#define CE_KEPT_FLOATS (12L << 20) /* 48 MB of kept exponentials at most */
#endif
#ifndef CE_KEPT_MIN
#define CE_KEPT_MIN 192
#endif

typedef struct {
    int positions, padded, dim, num_items, num_threads, want_grads, slices;
    int group_first, group_size; /* the position group run now: [group_first, + group_size), multiples of 48 */
    float scale;                 /* gradient scale (1 / positions for the mean) */
    const float *hidden;         /* [padded, D], zero rows past `positions` */
    const float *hidden_t;       /* [D, padded] */
    const float *items;          /* [V, D] */
    const int64_t *targets;      /* [positions], in [0, V) */
    float *partial;              /* per unit: m [48], S [48], G [48, D] */
    float *loss, *lse;           /* [padded] */
    float *grad_hidden;          /* [positions, D] */
    float *grad_items;           /* [V, D] */
    float *kept;                 /* NULL, or [V, group_size]: exp(l[v, p] - m) of phase 1 */
    float *kept_max;             /* [item tiles, group_size]: the m each tile's exponentials were taken at */
    int next;
} CEJob;

static inline long ce_partial_floats(int D) { return (long)CE_POSITIONS * (D + 2); }

/* items [first, last) of slice `slice` of `slices`, split at multiples of CE_ITEMS */
static void ce_slice(int V, int slices, int slice, int *first, int *last) {
    int tiles = (V + CE_ITEMS - 1) / CE_ITEMS;
    *first = (int)((long)tiles * slice / slices) * CE_ITEMS;
    *last = (int)((long)tiles * (slice + 1) / slices) * CE_ITEMS;
    if (*last > V) *last = V;
}

static void *ce_positions_worker(void *arg) {
    CEJob *job = (CEJob *)arg;
    unsigned csr = flush_denormals();
    const int D = job->dim, V = job->num_items, Pp = job->padded, Pg = job->group_size;
    const int units = Pg / CE_POSITIONS * job->slices;
    float *tile = scratch_acquire(2, CE_ITEMS * CE_POSITIONS + CE_POSITIONS);
    if (!tile) { restore_denormals(csr); return (void *)1; }
    float *tile_max = tile + CE_ITEMS * CE_POSITIONS;
    for (;;) {
        int unit = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (unit >= units) break;
        int p0 = job->group_first + unit / job->slices * CE_POSITIONS, first, last;
        ce_slice(V, job->slices, unit % job->slices, &first, &last);
        float *m = job->partial + unit * ce_partial_floats(D), *S = m + CE_POSITIONS, *G = S + CE_POSITIONS;
        for (int j = 0; j < CE_POSITIONS; j++) { m[j] = -INFINITY; S[j] = 0.0f; }
        if (job->want_grads) memset(G, 0, sizeof(float) * CE_POSITIONS * D);
        for (int v0 = first; v0 < last; v0 += CE_ITEMS) {
            int nv = last - v0 < CE_ITEMS ? last - v0 : CE_ITEMS;
            const float *w = job->items + (long)v0 * D;
            gemm(nv, CE_POSITIONS, D, w, D, job->hidden_t + p0, Pp, NULL, tile, CE_POSITIONS, 0); /* [nv, 48] */
            v8 mx[CE_POSITIONS / 8], sum[CE_POSITIONS / 8]; /* rows outer: one chain per 8 positions */
            for (int j = 0; j < CE_POSITIONS / 8; j++) mx[j] = ld(tile + 8 * j);
            for (int r = 1; r < nv; r++)
                for (int j = 0; j < CE_POSITIONS / 8; j++) mx[j] = vmax(mx[j], ld(tile + (long)r * CE_POSITIONS + 8 * j));
            for (int j = 0; j < CE_POSITIONS / 8; j++) st(tile_max + 8 * j, mx[j]);
            for (int j = 0; j < CE_POSITIONS; j++) {
                if (tile_max[j] <= m[j]) continue;
                float factor = m[j] == -INFINITY ? 0.0f : sexp(m[j] - tile_max[j]);
                S[j] *= factor;
                if (job->want_grads)
                    for (int d = 0; d < D; d++) G[(long)j * D + d] *= factor;
                m[j] = tile_max[j];
            }
            for (int j = 0; j < CE_POSITIONS / 8; j++) sum[j] = (v8){0};
            for (int r = 0; r < nv; r++) /* exp in place, summed per position */
                for (int j = 0; j < CE_POSITIONS / 8; j++) {
                    float *t = tile + (long)r * CE_POSITIONS + 8 * j;
                    v8 e = vexp(ld(t) - ld(m + 8 * j));
                    st(t, e);
                    sum[j] += e;
                }
            for (int j = 0; j < CE_POSITIONS / 8; j++) st(S + 8 * j, ld(S + 8 * j) + sum[j]);
            if (job->want_grads) /* G[48, D] += tile^T [48, nv] items[nv, D], tile read transposed */
                gemm_t(CE_POSITIONS, D, nv, tile, CE_POSITIONS, w, D, G, D, ACCUMULATE);
            if (job->kept) { /* the exponentials and their m kept for phase 2 */
                const int q = p0 - job->group_first;
                for (int r = 0; r < nv; r++)
                    for (int j = 0; j < CE_POSITIONS; j += 8)
                        st_stream(job->kept + (long)(v0 + r) * Pg + q + j, ld(tile + (long)r * CE_POSITIONS + j));
                memcpy(job->kept_max + (long)(v0 / CE_ITEMS) * Pg + q, m, sizeof(float) * CE_POSITIONS);
            }
        }
    }
    if (job->kept) stream_fence();
    restore_denormals(csr);
    return NULL;
}

/* the slices of each position block merged: log-sum-exp, loss, hidden-state gradient */
static void ce_merge(CEJob *job) {
    const int D = job->dim, slices = job->slices;
    for (int p = job->group_first; p < job->group_first + job->group_size; p++) {
        int j = p % CE_POSITIONS;
        const float *first = job->partial + (long)((p - job->group_first) / CE_POSITIONS) * slices * ce_partial_floats(D);
        float mx = -INFINITY, total = 0.0f, factor[CE_MAX_SLICES];
        for (int s = 0; s < slices; s++) {
            float ms = first[s * ce_partial_floats(D) + j];
            mx = ms > mx ? ms : mx;
        }
        for (int s = 0; s < slices; s++) {
            const float *part = first + s * ce_partial_floats(D);
            factor[s] = part[j] == -INFINITY ? 0.0f : sexp(part[j] - mx);
            total += part[CE_POSITIONS + j] * factor[s];
        }
        float lse = mx + logf(total);
        job->lse[p] = lse;
        if (p >= job->positions) { job->loss[p] = 0.0f; continue; }
        const float *h = job->hidden + (long)p * D, *wt = job->items + job->targets[p] * D;
        float target_logit = 0.0f;
        for (int d = 0; d < D; d++) target_logit += h[d] * wt[d];
        job->loss[p] = lse - target_logit;
        if (!job->want_grads) continue;
        float *g = job->grad_hidden + (long)p * D, inv = job->scale / total;
        for (int d = 0; d < D; d++) {
            float acc = 0.0f;
            for (int s = 0; s < slices; s++)
                acc += first[s * ce_partial_floats(D) + 2 * CE_POSITIONS + (long)j * D + d] * factor[s];
            g[d] = acc * inv - job->scale * wt[d];
        }
    }
}

static void *ce_items_worker(void *arg) {
    CEJob *job = (CEJob *)arg;
    unsigned csr = flush_denormals();
    const int D = job->dim, V = job->num_items, Pp = job->padded;
    float *tile = scratch_acquire(2, CE_POSITIONS * CE_ITEMS + CE_ITEMS);
    if (!tile) { restore_denormals(csr); return (void *)1; }
    float *factor = tile + CE_POSITIONS * CE_ITEMS;
    for (;;) {
        int v0 = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED) * CE_POSITIONS;
        if (v0 >= V) break;
        int nv = V - v0 < CE_POSITIONS ? V - v0 : CE_POSITIONS;
        const float *w = job->items + (long)v0 * D;
        float *gw = job->grad_items + (long)v0 * D;
        memset(gw, 0, sizeof(float) * nv * D);
        for (int p0 = 0; p0 < Pp; p0 += CE_ITEMS) {
            int np = Pp - p0 < CE_ITEMS ? Pp - p0 : CE_ITEMS; /* a multiple of 16 */
            for (int j = 0; j < np; j++) factor[j] = p0 + j < job->positions ? job->scale : 0.0f;
            gemm(nv, np, D, w, D, job->hidden_t + p0, Pp, NULL, tile, CE_ITEMS, 0); /* [nv, np] */
            for (int r = 0; r < nv; r++) {
                float *t = tile + (long)r * CE_ITEMS;
                for (int j = 0; j < np; j += 8) st(t + j, vexp(ld(t + j) - ld(job->lse + p0 + j)) * ld(factor + j));
            }
            int end = job->positions - p0 < np ? job->positions - p0 : np;
            for (int j = 0; j < end; j++) {
                int64_t t = job->targets[p0 + j] - v0;
                if (t >= 0 && t < nv) tile[t * CE_ITEMS + j] -= job->scale;
            }
            gemm(nv, D, np, tile, CE_ITEMS, job->hidden + (long)p0 * D, D, NULL, gw, D, ACCUMULATE);
        }
    }
    restore_denormals(csr);
    return NULL;
}

/* phase 2 from the kept exponentials (three products in all), per tile of CE_ITEMS items v:
 * grad_items[v] (+)= sum_p kept[v, p] f_p hidden[p] with f_p = scale exp(m_tile, p - lse_p) folded into
 * the hidden rows ([group, D] per tile, in cache); the targets' -scale hidden[p] is added afterwards */
static void *ce_kept_items_worker(void *arg) {
    CEJob *job = (CEJob *)arg;
    unsigned csr = flush_denormals();
    const int D = job->dim, V = job->num_items, Pg = job->group_size, g0 = job->group_first;
    float *scaled = scratch_acquire(2, (long)Pg * D + Pg);
    if (!scaled) { restore_denormals(csr); return (void *)1; }
    float *factor = scaled + (long)Pg * D;
    int end = job->positions - g0 < Pg ? job->positions - g0 : Pg;
    for (;;) {
        int tile = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED), v0 = tile * CE_ITEMS;
        if (v0 >= V) break;
        int nv = V - v0 < CE_ITEMS ? V - v0 : CE_ITEMS;
        const float *m = job->kept_max + (long)tile * Pg;
        for (int j = 0; j < Pg; j += 8)
            st(factor + j, vexp(ld(m + j) - ld(job->lse + g0 + j)) * bc(job->scale));
        for (int j = end; j < Pg; j++) factor[j] = 0.0f;
        for (int j = 0; j < Pg; j++) {
            const float *h = job->hidden + (long)(g0 + j) * D;
            float *o = scaled + (long)j * D;
            v8 f = bc(factor[j]);
            int d = 0;
            for (; d + 8 <= D; d += 8) st(o + d, ld(h + d) * f);
            for (; d < D; d++) o[d] = h[d] * factor[j];
        }
        gemm(nv, D, Pg, job->kept + (long)v0 * Pg, Pg, scaled, D, NULL, job->grad_items + (long)v0 * D, D,
             g0 ? ACCUMULATE : 0);
    }
    restore_denormals(csr);
    return NULL;
}

/* kept exponentials: one buffer kept between calls (no page faults per step), else a fresh one */
static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
static float *kept_buffer;
static size_t kept_capacity;

static float *kept_acquire(size_t floats, int *owned) {
    *owned = 0;
    if (pthread_mutex_trylock(&kept_lock) == 0) {
        if (kept_capacity < floats) {
            free(kept_buffer);
            kept_buffer = aligned_alloc(64, sizeof(float) * ((floats + 15) / 16 * 16));
            kept_capacity = kept_buffer ? floats : 0;
        }
        if (kept_buffer) return kept_buffer;
        pthread_mutex_unlock(&kept_lock);
        return NULL;
    }
    *owned = 1; /* another call holds the shared one */
    return aligned_alloc(64, sizeof(float) * ((floats + 15) / 16 * 16));
}

static void kept_release(float *buffer, int owned) {
    if (!buffer) return;
    if (owned) free(buffer);
    else pthread_mutex_unlock(&kept_lock);
}

/* Three products instead of four where the exponentials of a group of positions fit in `budget`
 * floats (CE_KEPT_FLOATS where negative; a function of the sizes alone, never of the threads): groups
 * of at least CE_KEPT_MIN positions (or all of them), as even as they can be. Returns whether they are
 * kept; blocks of CE_POSITIONS per group in *group_blocks (all of them when not kept). */
static int ce_plan(int padded, int num_items, long budget, int *group_blocks) {
    int blocks = padded / CE_POSITIONS, tiles = (num_items + CE_ITEMS - 1) / CE_ITEMS;
    long fit = (budget < 0 ? CE_KEPT_FLOATS : budget) / ((long)tiles * CE_ITEMS) / CE_POSITIONS;
    int keep = fit * CE_POSITIONS >= (blocks < CE_KEPT_MIN / CE_POSITIONS ? blocks * CE_POSITIONS : CE_KEPT_MIN);
    int per_group = keep && fit < blocks ? (int)fit : blocks;
    int groups = (blocks + per_group - 1) / per_group;
    *group_blocks = (blocks + groups - 1) / groups;
    return keep;
}

/* sizes: padded positions, num_items, kept floats at most (-1: CE_KEPT_FLOATS). Whether
 * recsys_softmax_ce with gradients keeps its exponentials (1) or recomputes the logits (0). */
int recsys_ce_keeps_exponentials(const int64_t *sizes) {
    int group_blocks;
    return ce_plan((int)sizes[0], (int)sizes[1], (long)sizes[2], &group_blocks);
}

/* Returns 0 on success. config: positions, padded (a multiple of CE_POSITIONS), dim, num_items,
 * num_threads, want_grads, kept floats at most (-1: CE_KEPT_FLOATS, 0: four products); scale: the
 * gradients' factor. grad_hidden / grad_items are written only
 * with want_grads. */
int recsys_softmax_ce(const int32_t *config, const float *scale, const float *hidden, const float *hidden_t,
                      const float *items, const int64_t *targets, float *loss, float *lse, float *grad_hidden,
                      float *grad_items) {
    CEJob job;
    job.positions = config[0]; job.padded = config[1]; job.dim = config[2]; job.num_items = config[3];
    job.num_threads = config[4] < 1 ? 1 : config[4]; job.want_grads = config[5];
    job.scale = scale[0]; job.hidden = hidden; job.hidden_t = hidden_t; job.items = items;
    job.targets = targets; job.loss = loss; job.lse = lse; job.grad_hidden = grad_hidden;
    job.grad_items = grad_items;
    if (job.padded % CE_POSITIONS || job.padded < job.positions || job.num_items < 1) return 2;
    for (int p = 0; p < job.positions; p++)
        if (targets[p] < 0 || targets[p] >= job.num_items) return 3;
    /* each group runs phase 1 (keeping its exponentials), then phase 2 from them */
    int blocks = job.padded / CE_POSITIONS, tiles = (job.num_items + CE_ITEMS - 1) / CE_ITEMS, group_blocks;
    int keep = ce_plan(job.padded, job.num_items, config[6], &group_blocks) && job.want_grads;
    if (!keep) group_blocks = blocks;
    int groups = (blocks + group_blocks - 1) / group_blocks;
    /* slices: at least 32 units per group where the catalogue has the tiles for it */
    int slices = (32 + group_blocks - 1) / group_blocks;
    if (slices > CE_MAX_SLICES) slices = CE_MAX_SLICES;
    if (slices > tiles) slices = tiles;
    job.slices = slices;
    job.kept = NULL;
    job.kept_max = NULL;
    job.partial = malloc(sizeof(float) * group_blocks * slices * ce_partial_floats(job.dim));
    int kept_owned = 0;
    if (keep) {
        job.kept = kept_acquire((size_t)tiles * CE_ITEMS * group_blocks * CE_POSITIONS, &kept_owned);
        job.kept_max = malloc(sizeof(float) * (long)tiles * group_blocks * CE_POSITIONS);
    }
    int failed = !job.partial || (keep && (!job.kept || !job.kept_max));
    int item_blocks = (job.num_items + CE_POSITIONS - 1) / CE_POSITIONS;
    for (int g = 0; g < groups && !failed; g++) {
        job.group_first = g * group_blocks * CE_POSITIONS;
        job.group_size = (g + 1) * group_blocks < blocks ? group_blocks * CE_POSITIONS : job.padded - job.group_first;
        int units = job.group_size / CE_POSITIONS * slices;
        job.next = 0;
        failed = run_threads(ce_positions_worker, &job, job.num_threads < units ? job.num_threads : units);
        if (failed) break;
        ce_merge(&job);
        if (keep) {
            job.next = 0;
            failed = run_threads(ce_kept_items_worker, &job, job.num_threads < tiles ? job.num_threads : tiles);
        }
    }
    free(job.partial);
    kept_release(job.kept, kept_owned);
    free(job.kept_max);
    if (keep && !failed) /* the targets' part of the item gradient: -scale hidden[p] at row target_p */
        for (int p = 0; p < job.positions; p++) {
            float *g = job.grad_items + job.targets[p] * job.dim;
            const float *h = job.hidden + (long)p * job.dim;
            for (int d = 0; d < job.dim; d++) g[d] -= job.scale * h[d];
        }
    if (failed || !job.want_grads || keep) return failed;
    job.next = 0;
    return run_threads(ce_items_worker, &job, job.num_threads < item_blocks ? job.num_threads : item_blocks);
}
