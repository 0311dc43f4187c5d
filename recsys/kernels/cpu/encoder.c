/* Fused inference of a pre-LayerNorm transformer encoder (SASRec / BERT4Rec blocks) on CPU, one
 * sequence at a time: the last position's hidden state of every row of a left-padded batch.
 *
 * Built with the other kernels (../cpu_kernels.c) by recsys/kernels/cpu_build.py; the PyTorch path of
 * the models is the reference it is tested against. Per sequence
 * (n items, n <= L) every intermediate lives in a per-thread scratch of a few hundred KB that stays in
 * the core's L2 cache, where the PyTorch path streams each [tokens, D] tensor through memory once per op:
 *
 *   x = E[id] * emb_scale + P[n - t]                       (t = 0 .. n-1, oldest first)
 *   per block:  u = LN1(x);  q, k, v = u Wqkv^T + b  (folded: q = u Wq^T + b, k = v = u)
 *               a = softmax(q k^T * scale [+ causal mask]) v      per head
 *               x = x + a Wo^T + bo;  x = x + GELU(LN2(x) W1^T + b1) W2^T + b2
 *   the last block computes the last query, its output and feed-forward only; then the final LN.
 *
 * Products are register-blocked (6 rows x 16 columns of FMAs; 6 x 32 in 16-lane vectors where the CPU
 * has AVX-512; GCC vector extensions); exp and erf are vectorised polynomials (exp: Cephes' degree-5,
 * ~1 ulp; erf: Abramowitz & Stegun 7.1.26, |err| < 1.5e-7). Rows are shared among threads through an
 * atomic counter. Weights come transposed ([in, out], row-major) so that every product reads its right
 * operand row by row. */

#define QUERY_TILE 6

/* row stride of K^T and of the scores: a multiple of 16 floats, so that every 16-key slice of a row
 * is one 64-byte cache line */
static inline int padded_length(int L) { return (L + 15) & ~15; }

typedef struct {
    const float *ln1_g, *ln1_b, *w_qkv, *b_qkv, *w_out, *b_out, *ln2_g, *ln2_b, *w1, *b1, *w2, *b2;
} BlockParams;

typedef struct {
    int batch, length, dim, heads, ffn, num_blocks, causal, folded, num_threads;
    float eps, emb_scale, attn_scale;
    const int64_t *ids;    /* [B, L] */
    const int64_t *start;  /* [B] first item's column */
    const int64_t *count;  /* [B] items per row */
    const float *item_table, *position_table, *final_g, *final_b;
    const BlockParams *blocks;
    float *out;            /* [B, D] */
    int next_row;          /* shared counter */
} Job;

typedef struct {
    float *x, *u, *qkv, *att, *ffn, *kt, *scores;
} Scratch;

/* out[d, j] = in[j, d] for j < rows, d < cols (row strides ld_in, ld_out): 8 x 8 blocks transposed
 * in registers (unpack / shuffle), scalar edges */
static void transpose(const float *in, int ld_in, int rows, int cols, float *out, int ld_out) {
    int j = 0;
    for (; j + 8 <= rows; j += 8) {
        int d = 0;
        for (; d + 8 <= cols; d += 8) {
            const float *p = in + (long)j * ld_in + d;
            v8 r0 = ld(p), r1 = ld(p + ld_in), r2 = ld(p + 2L * ld_in), r3 = ld(p + 3L * ld_in),
               r4 = ld(p + 4L * ld_in), r5 = ld(p + 5L * ld_in), r6 = ld(p + 6L * ld_in), r7 = ld(p + 7L * ld_in);
            const v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
            v8 t0 = __builtin_shuffle(r0, r1, lo), t1 = __builtin_shuffle(r0, r1, hi);
            v8 t2 = __builtin_shuffle(r2, r3, lo), t3 = __builtin_shuffle(r2, r3, hi);
            v8 t4 = __builtin_shuffle(r4, r5, lo), t5 = __builtin_shuffle(r4, r5, hi);
            v8 t6 = __builtin_shuffle(r6, r7, lo), t7 = __builtin_shuffle(r6, r7, hi);
            const v8i even = {0, 1, 8, 9, 4, 5, 12, 13}, odd = {2, 3, 10, 11, 6, 7, 14, 15};
            v8 u0 = __builtin_shuffle(t0, t2, even), u1 = __builtin_shuffle(t0, t2, odd);
            v8 u2 = __builtin_shuffle(t1, t3, even), u3 = __builtin_shuffle(t1, t3, odd);
            v8 u4 = __builtin_shuffle(t4, t6, even), u5 = __builtin_shuffle(t4, t6, odd);
            v8 u6 = __builtin_shuffle(t5, t7, even), u7 = __builtin_shuffle(t5, t7, odd);
            const v8i first = {0, 1, 2, 3, 8, 9, 10, 11}, second = {4, 5, 6, 7, 12, 13, 14, 15};
            float *q = out + (long)d * ld_out + j;
            st(q, __builtin_shuffle(u0, u4, first));
            st(q + ld_out, __builtin_shuffle(u1, u5, first));
            st(q + 2L * ld_out, __builtin_shuffle(u2, u6, first));
            st(q + 3L * ld_out, __builtin_shuffle(u3, u7, first));
            st(q + 4L * ld_out, __builtin_shuffle(u0, u4, second));
            st(q + 5L * ld_out, __builtin_shuffle(u1, u5, second));
            st(q + 6L * ld_out, __builtin_shuffle(u2, u6, second));
            st(q + 7L * ld_out, __builtin_shuffle(u3, u7, second));
        }
        for (; d < cols; d++)
            for (int i = j; i < j + 8; i++) out[(long)d * ld_out + i] = in[(long)i * ld_in + d];
    }
    for (; j < rows; j++)
        for (int d = 0; d < cols; d++) out[(long)d * ld_out + j] = in[(long)j * ld_in + d];
}

/* attention of queries [q0, q0 + m) of one sequence of n tokens, every head:
 * q: row stride ldq; k, v: row stride ldkv; out: row stride ldo (columns h * dh .. (h + 1) * dh) */
static void attention(const Job *job, Scratch *s, int n, int q0, int m, const float *q, int ldq,
                      const float *k, const float *v, int ldkv, float *out, int ldo) {
    int D = job->dim, H = job->heads, dh = D / H, Lp = padded_length(job->length);
    for (int h = 0; h < H; h++) {
        /* K^T [dh, n] of this head, row stride Lp */
        transpose(k + h * dh, ldkv, n, dh, s->kt, Lp);
        for (int i0 = q0; i0 < q0 + m; i0 += QUERY_TILE) {
            int rows = q0 + m - i0 < QUERY_TILE ? q0 + m - i0 : QUERY_TILE;
            int keys = job->causal ? i0 + rows : n; /* keys any of these queries sees */
            /* scores for a multiple of 8 keys: no scalar column tail; the columns past n read finite
             * leftovers of K^T (zeroed scratch or an earlier row) and are set to 0 by the softmax */
            gemm(rows, (keys + 7) & ~7, dh, q + (long)(i0 - q0) * ldq + h * dh, ldq, s->kt, Lp, NULL,
                 s->scores, Lp, 0);
            float inv[QUERY_TILE];
            for (int r = 0; r < rows; r++)
                inv[r] = 1.0f / softmax_row(s->scores + (long)r * Lp, job->causal ? i0 + r + 1 : n, keys,
                                            job->attn_scale);
            float *o = out + (long)(i0 - q0) * ldo + h * dh;
            gemm(rows, dh, keys, s->scores, Lp, v + h * dh, ldkv, NULL, o, ldo, 0);
            for (int r = 0; r < rows; r++) {
                float *orow = o + (long)r * ldo;
                int d = 0;
                for (; d + 8 <= dh; d += 8) st(orow + d, ld(orow + d) * bc(inv[r]));
                for (; d < dh; d++) orow[d] *= inv[r];
            }
        }
    }
}

/* The last block's one query (row n - 1 of s->u, the normalised inputs) with its key and value
 * projections folded per head, as :meth:`CausalSelfAttention.folded` does for one head: scores
 * q_h . (Wk_h u_j + bk_h) = (Wk_h^T q_h) . u_j + a constant that softmax cancels, and the weighted
 * values sum_j p_j (Wv_h u_j + bv_h) = Wv_h (sum_j p_j u_j) + bv_h (the p_j sum to 1). So no key or
 * value is projected at the n positions: per head one D-vector meets the u_j themselves. Output: s->att[0, :D]. */
static void last_query_attention(const Job *job, Scratch *s, int n, const BlockParams *b) {
    int D = job->dim, H = job->heads, dh = D / H, Lp = padded_length(job->length), W = 3 * D;
    float *q = s->qkv, *qk = s->qkv + D, *y = s->qkv + 2 * D, *scores = s->scores;
    const float *u = s->u;
    gemm(1, D, D, u + (long)(n - 1) * D, D, b->w_qkv, W, b->b_qkv, q, D, 0); /* the query [D] */
    transpose(u, D, n, D, s->kt, Lp);                                        /* u^T [D, n] */
    for (int h = 0; h < H; h++) {
        const float *wk = b->w_qkv + D + h * dh, *wv = b->w_qkv + 2 * D + h * dh; /* columns of this head */
        for (int d = 0; d < D; d++) { /* qk = Wk_h^T q_h: row d of Wk^T is w_qkv[d, D + h dh ...] */
            float acc = 0.0f;
            for (int e = 0; e < dh; e++) acc += wk[(long)d * W + e] * q[h * dh + e];
            qk[d] = acc;
        }
        gemm(1, (n + 7) & ~7, D, qk, D, s->kt, Lp, NULL, scores, Lp, 0);
        float inv = 1.0f / softmax_row(scores, n, n, job->attn_scale);
        gemm(1, D, n, scores, Lp, u, D, NULL, y, D, 0); /* sum_j p_j u_j (unnormalised) */
        for (int d = 0; d < D; d++) y[d] *= inv;
        gemm(1, dh, D, y, D, wv, W, b->b_qkv + 2 * D + h * dh, s->att + h * dh, D, 0);
    }
}

static void encode_row(const Job *job, Scratch *s, int row) {
    int D = job->dim, F = job->ffn, L = job->length, n = (int)job->count[row];
    const int64_t *ids = job->ids + (long)row * L + job->start[row];
    for (int t = 0; t < n; t++) {
        if (t + 4 < n) /* the item rows are scattered over the table: fetch ahead */
            for (int d = 0; d < D; d += 16) __builtin_prefetch(job->item_table + ids[t + 4] * D + d);
        const float *e = job->item_table + ids[t] * D, *p = job->position_table + (long)(n - t) * D;
        float *xr = s->x + (long)t * D;
        for (int d = 0; d < D; d++) xr[d] = e[d] * job->emb_scale + p[d];
    }
    for (int bi = 0; bi < job->num_blocks; bi++) {
        const BlockParams *b = job->blocks + bi;
        int last = bi == job->num_blocks - 1;
        layer_norm(n, D, s->x, D, b->ln1_g, b->ln1_b, job->eps, s->u, D);
        int q0 = last ? n - 1 : 0, m = n - q0;
        if (job->folded) { /* keys and values are the normalised inputs themselves */
            gemm(m, D, D, s->u + (long)q0 * D, D, b->w_qkv, D, b->b_qkv, s->qkv, D, 0);
            attention(job, s, n, q0, m, s->qkv, D, s->u, s->u, D, s->att, D);
        } else if (last) {
            last_query_attention(job, s, n, b);
        } else { /* [q | k | v] per row */
            gemm(n, 3 * D, D, s->u, D, b->w_qkv, 3 * D, b->b_qkv, s->qkv, 3 * D, 0);
            attention(job, s, n, 0, n, s->qkv, 3 * D, s->qkv + D, s->qkv + 2 * D, 3 * D, s->att, D);
        }
        float *x = s->x + (long)q0 * D; /* the rows this block still computes */
        gemm(m, D, D, s->att, D, b->w_out, D, b->b_out, x, D, 1);
        layer_norm(m, D, x, D, b->ln2_g, b->ln2_b, job->eps, s->u, D);
        gemm(m, F, D, s->u, D, b->w1, F, b->b1, s->ffn, F, GELU);
        gemm(m, D, F, s->ffn, F, b->w2, D, b->b2, x, D, 1);
    }
    layer_norm(1, D, s->x + (long)(n - 1) * D, D, job->final_g, job->final_b, job->eps,
               job->out + (long)row * D, D);
}

static void *worker(void *arg) {
    Job *job = (Job *)arg;
    unsigned csr = flush_denormals();
    long L = job->length, Lp = padded_length(job->length), D = job->dim, F = job->ffn;
    Scratch s;
    float *mem = scratch_acquire(0, L * D * 3 + L * 3 * D + L * F + D * Lp + QUERY_TILE * Lp + 64);
    if (!mem) { restore_denormals(csr); return (void *)1; }
    s.x = mem; s.u = s.x + L * D; s.att = s.u + L * D; s.qkv = s.att + L * D;
    s.ffn = s.qkv + L * 3 * D; s.kt = s.ffn + L * F; s.scores = s.kt + D * Lp;
    for (;;) {
        int row = __atomic_fetch_add(&job->next_row, 1, __ATOMIC_RELAXED);
        if (row >= job->batch) break;
        encode_row(job, &s, row);
    }
    scratch_release(mem);
    restore_denormals(csr);
    return NULL;
}

/* Returns 0 on success. config: batch, length, dim, heads, ffn, num_blocks, causal, folded, num_threads;
 * scalars: eps, emb_scale, attn_scale; tables: item, position, final LN weight, final LN bias;
 * blocks: 12 pointers per block (BlockParams order). */
int recsys_encode_last(const int32_t *config, const float *scalars, const int64_t *ids, const int64_t *start,
                       const int64_t *count, const float *const *tables, const float *const *blocks, float *out) {
    Job job;
    job.batch = config[0]; job.length = config[1]; job.dim = config[2]; job.heads = config[3];
    job.ffn = config[4]; job.num_blocks = config[5]; job.causal = config[6]; job.folded = config[7];
    job.num_threads = config[8] < 1 ? 1 : config[8];
    job.eps = scalars[0]; job.emb_scale = scalars[1]; job.attn_scale = scalars[2];
    job.ids = ids; job.start = start; job.count = count;
    job.item_table = tables[0]; job.position_table = tables[1]; job.final_g = tables[2]; job.final_b = tables[3];
    job.out = out; job.next_row = 0;
    if (job.dim % job.heads || job.num_blocks < 1) return 2;
    for (int r = 0; r < job.batch; r++)
        if (count[r] < 1 || count[r] > job.length || start[r] < 0 || start[r] + count[r] > job.length) return 3;
    BlockParams *params = malloc(sizeof(BlockParams) * job.num_blocks);
    if (!params) return 1;
    for (int b = 0; b < job.num_blocks; b++) memcpy(&params[b], blocks + 12 * b, sizeof(BlockParams));
    job.blocks = params;
    int failed = run_threads(worker, &job, job.num_threads < job.batch ? job.num_threads : job.batch);
    free(params);
    return failed;
}
