/* Fused inference of a pre-LayerNorm transformer encoder (SASRec / BERT4Rec blocks) on CPU, one
 * sequence at a time: the last position's hidden state of every row of a left-padded batch.
 *
 * Built on first use by recsys/kernels/cpu_encoder.py with the system C compiler (cc -O3
 * -march=native); the PyTorch path of the models is the reference it is tested against. Per sequence
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
#include <math.h>
#include <pthread.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 ld(const float *p) { v8 v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v8 v) { __builtin_memcpy(p, &v, sizeof v); }
/* a store that bypasses the caches where the CPU has one (p 32-byte aligned); stream_fence() after */
static inline void st_stream(float *p, v8 v) {
#if defined(__AVX__)
    _mm256_stream_ps(p, (__m256)v);
#else
    st(p, v);
#endif
}
static inline void stream_fence(void) {
#if defined(__SSE__)
    _mm_sfence();
#endif
}
static inline v8 bc(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline v8i bits_of(v8 v) { v8i i; __builtin_memcpy(&i, &v, sizeof i); return i; }
static inline v8 from_bits(v8i i) { v8 v; __builtin_memcpy(&v, &i, sizeof v); return v; }
/* where mask (all bits of a lane set) a, else b */
static inline v8 vsel(v8i mask, v8 a, v8 b) { return from_bits((bits_of(a) & mask) | (bits_of(b) & ~mask)); }
static inline v8 vmax(v8 a, v8 b) {
#if defined(__AVX__)
    return (v8)_mm256_max_ps((__m256)a, (__m256)b);
#else
    return vsel(a > b, a, b);
#endif
}
static inline v8 vmin(v8 a, v8 b) {
#if defined(__AVX__)
    return (v8)_mm256_min_ps((__m256)a, (__m256)b);
#else
    return vsel(a < b, a, b);
#endif
}
static inline float hsum(v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
static inline float hmax(v8 v) {
    float m = v[0];
    for (int i = 1; i < 8; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* e^x for x in [-87, 88] (clamped): x = n ln2 + r, |r| <= ln2 / 2, e^r by Cephes' polynomial, times
 * 2^n (TIMES_POW2). n is rounded with the 1.5 * 2^23 trick (no rounding instruction needed). One
 * definition for every vector width (VF floats, BC a broadcast). */
#define DEFINE_VEXP(NAME, VF, BC, MAX, MIN, TIMES_POW2)                                                 \
    static inline VF NAME(VF x) {                                                                       \
        x = MIN(MAX(x, BC(-87.0f)), BC(88.0f));                                                         \
        VF n = (x * BC(1.44269504088896341f) + BC(12582912.0f)) - BC(12582912.0f);                     \
        VF r = x - n * BC(0.693359375f) + n * BC(2.12194440e-4f);                                       \
        VF p = BC(1.9875691500e-4f);                                                                    \
        p = p * r + BC(1.3981999507e-3f);                                                               \
        p = p * r + BC(8.3334519073e-3f);                                                               \
        p = p * r + BC(4.1665795894e-2f);                                                               \
        p = p * r + BC(1.6666665459e-1f);                                                               \
        p = p * r + BC(5.0000001201e-1f);                                                               \
        p = p * r * r + r + BC(1.0f);                                                                   \
        return TIMES_POW2(p, n);                                                                        \
    }
/* p 2^n for integral n in [-126, 127]: the exponent bits built from n */
static inline v8 times_pow2(v8 p, v8 n) { return p * from_bits((__builtin_convertvector(n, v8i) + 127) << 23); }
DEFINE_VEXP(vexp, v8, bc, vmax, vmin, times_pow2)

static inline float sexp(float x) {
    v8 v = vexp(bc(x));
    return v[0];
}

/* erf(x) (Abramowitz & Stegun 7.1.26) and GELU(x) = x / 2 (1 + erf(x / sqrt 2)), for every width */
#define DEFINE_VERF(NAME, VF, VI, BC, EXP)                                                              \
    static inline VF NAME(VF x) {                                                                       \
        VI xi, sign;                                                                                    \
        __builtin_memcpy(&xi, &x, sizeof xi);                                                           \
        sign = xi & (int32_t)0x80000000;                                                                \
        xi ^= sign;                                                                                     \
        VF ax;                                                                                          \
        __builtin_memcpy(&ax, &xi, sizeof ax);                                                          \
        VF t = BC(1.0f) / (BC(1.0f) + BC(0.3275911f) * ax);                                             \
        VF y = BC(1.061405429f);                                                                        \
        y = y * t + BC(-1.453152027f);                                                                  \
        y = y * t + BC(1.421413741f);                                                                   \
        y = y * t + BC(-0.284496736f);                                                                  \
        y = y * t + BC(0.254829592f);                                                                   \
        y = BC(1.0f) - y * t * EXP(-ax * ax);                                                           \
        __builtin_memcpy(&xi, &y, sizeof xi);                                                           \
        xi ^= sign;                                                                                     \
        __builtin_memcpy(&y, &xi, sizeof y);                                                            \
        return y;                                                                                       \
    }
DEFINE_VERF(verf, v8, v8i, bc, vexp)

static inline v8 vgelu(v8 v) { return bc(0.5f) * v * (bc(1.0f) + verf(v * bc(0.70710678118654752f))); }
static inline float sgelu(float x) { return vgelu(bc(x))[0]; }

/* what a product does with its result (its "mode" argument): add it to C, or pass it through GELU */
#define ACCUMULATE 1
#define GELU 2

/* keeps a loaded vector in a register: without it GCC re-reads B from memory in every FMA (a memory
 * operand per row), which makes the kernel load-bound. x86 with AVX only (32-byte registers); elsewhere
 * (x86 without AVX, ARM) an 8-lane vector spans two registers and the hint is left out, so the kernels
 * still build there */
#if defined(__AVX__)
#define IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define IN_REGISTER(v) ((void)0)
#endif

/* A[r, k] of a row-major A (a_t 0) or of one stored column-major, i.e. read from its transpose (a_t 1) */
#define A_AT(r, k) (a_t ? A[(long)(k) * lda + (r)] : A[(long)(r) * lda + (k)])

/* C[R, j .. j + 16) (+)= A[R, K] B[K, j .. j + 16) (+ bias), R <= 6 rows kept in 2 R accumulators */
static inline __attribute__((always_inline)) void tile16(const int R, const int a_t, int K, const float *A, int lda,
                                                         const float *B, int ldb, const float *bias, float *C,
                                                         int ldc, int mode) {
    v8 s[6][2];
    for (int r = 0; r < R; r++) s[r][0] = s[r][1] = (v8){0};
#pragma GCC unroll 4
    for (int k = 0; k < K; k++, B += ldb) {
        v8 b0 = ld(B), b1 = ld(B + 8);
        IN_REGISTER(b0);
        IN_REGISTER(b1);
        for (int r = 0; r < R; r++) {
            v8 x = bc(A_AT(r, k));
            s[r][0] += x * b0;
            s[r][1] += x * b1;
        }
    }
    for (int r = 0; r < R; r++) {
        float *c = C + (long)r * ldc;
        if (bias) { s[r][0] += ld(bias); s[r][1] += ld(bias + 8); }
        if (mode & ACCUMULATE) { s[r][0] += ld(c); s[r][1] += ld(c + 8); }
        if (mode & GELU) { s[r][0] = vgelu(s[r][0]); s[r][1] = vgelu(s[r][1]); }
        st(c, s[r][0]);
        st(c + 8, s[r][1]);
    }
}

/* the same for 8 columns */
static inline __attribute__((always_inline)) void tile8(const int R, const int a_t, int K, const float *A, int lda,
                                                        const float *B, int ldb, const float *bias, float *C,
                                                        int ldc, int mode) {
    v8 s[6];
    for (int r = 0; r < R; r++) s[r] = (v8){0};
#pragma GCC unroll 4
    for (int k = 0; k < K; k++, B += ldb) {
        v8 b0 = ld(B);
        IN_REGISTER(b0);
        for (int r = 0; r < R; r++) s[r] += bc(A_AT(r, k)) * b0;
    }
    for (int r = 0; r < R; r++) {
        float *c = C + (long)r * ldc;
        if (bias) s[r] += ld(bias);
        if (mode & ACCUMULATE) s[r] += ld(c);
        if (mode & GELU) s[r] = vgelu(s[r]);
        st(c, s[r]);
    }
}

#if defined(__AVX512F__)
/* With AVX-512: the same tiles in 16-lane vectors, 32 columns (two per row, 12 accumulators) or 16
 * (one per row): half the FMA instructions of the 8-lane tiles, and twice their throughput on cores
 * with full-width 512-bit FMA units. */
typedef float v16 __attribute__((vector_size(64)));
static inline v16 ld16(const float *p) { v16 v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void st16(float *p, v16 v) { __builtin_memcpy(p, &v, sizeof v); }
static inline v16 bc16(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
#define IN_ZMM(v) __asm__("" : "+v"(v))
typedef int32_t v16i __attribute__((vector_size(64)));
static inline v16 vmax16(v16 a, v16 b) { return (v16)_mm512_max_ps((__m512)a, (__m512)b); }
static inline v16 vmin16(v16 a, v16 b) { return (v16)_mm512_min_ps((__m512)a, (__m512)b); }
/* AVX-512 scales by 2^n in one instruction (scalef): the same value as building the exponent bits */
static inline v16 times_pow2_16(v16 p, v16 n) { return (v16)_mm512_scalef_ps((__m512)p, (__m512)n); }
DEFINE_VEXP(vexp16, v16, bc16, vmax16, vmin16, times_pow2_16)
DEFINE_VERF(verf16, v16, v16i, bc16, vexp16)
static inline v16 vgelu16(v16 v) { return bc16(0.5f) * v * (bc16(1.0f) + verf16(v * bc16(0.70710678118654752f))); }

/* the epilogue of a 16-column piece of row r: bias, accumulate, GELU, store */
static inline __attribute__((always_inline)) void finish16(v16 s, const float *bias, float *c, int mode) {
    if (bias) s += ld16(bias);
    if (mode & ACCUMULATE) s += ld16(c);
    if (mode & GELU) s = vgelu16(s);
    st16(c, s);
}

static inline __attribute__((always_inline)) void tile32w(const int R, const int a_t, int K, const float *A, int lda,
                                                          const float *B, int ldb, const float *bias, float *C,
                                                          int ldc, int mode) {
    v16 s[6][2];
    for (int r = 0; r < R; r++) s[r][0] = s[r][1] = (v16){0};
#pragma GCC unroll 4
    for (int k = 0; k < K; k++, B += ldb) {
        v16 b0 = ld16(B), b1 = ld16(B + 16);
        IN_ZMM(b0);
        IN_ZMM(b1);
        for (int r = 0; r < R; r++) {
            v16 x = bc16(A_AT(r, k));
            s[r][0] += x * b0;
            s[r][1] += x * b1;
        }
    }
    for (int r = 0; r < R; r++) {
        float *c = C + (long)r * ldc;
        finish16(s[r][0], bias, c, mode);
        finish16(s[r][1], bias ? bias + 16 : NULL, c + 16, mode);
    }
}

static inline __attribute__((always_inline)) void tile16w(const int R, const int a_t, int K, const float *A, int lda,
                                                          const float *B, int ldb, const float *bias, float *C,
                                                          int ldc, int mode) {
    v16 s[6];
    for (int r = 0; r < R; r++) s[r] = (v16){0};
#pragma GCC unroll 4
    for (int k = 0; k < K; k++, B += ldb) {
        v16 b0 = ld16(B);
        IN_ZMM(b0);
        for (int r = 0; r < R; r++) s[r] += bc16(A_AT(r, k)) * b0;
    }
    for (int r = 0; r < R; r++) finish16(s[r], bias, C + (long)r * ldc, mode);
}
#endif

/* C[R, N] (+)= A[R, K] B[K, N] (+ bias) for R <= 6 rows: 16 columns at a time (32 with AVX-512), then
 * 8, then one */
static inline __attribute__((always_inline)) void rows(const int R, const int a_t, int N, int K, const float *A, int lda,
                                                       const float *B, int ldb, const float *bias, float *C,
                                                       int ldc, int mode) {
    int j = 0;
#if defined(__AVX512F__)
    for (; j + 32 <= N; j += 32)
        tile32w(R, a_t, K, A, lda, B + j, ldb, bias ? bias + j : NULL, C + j, ldc, mode);
    for (; j + 16 <= N; j += 16)
        tile16w(R, a_t, K, A, lda, B + j, ldb, bias ? bias + j : NULL, C + j, ldc, mode);
#endif
    for (; j + 16 <= N; j += 16)
        tile16(R, a_t, K, A, lda, B + j, ldb, bias ? bias + j : NULL, C + j, ldc, mode);
    for (; j + 8 <= N; j += 8)
        tile8(R, a_t, K, A, lda, B + j, ldb, bias ? bias + j : NULL, C + j, ldc, mode);
    for (; j < N; j++)
        for (int r = 0; r < R; r++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) acc += A_AT(r, k) * B[(long)k * ldb + j];
            float *c = C + (long)r * ldc + j;
            float y = ((mode & ACCUMULATE) ? *c : 0.0f) + acc + (bias ? bias[j] : 0.0f);
            *c = (mode & GELU) ? sgelu(y) : y;
        }
}

/* rows() for R = 1 .. 6 rows, each R compiled with its accumulators in registers; rows_of reads a
 * row-major A, rows_of_t an A stored transposed ([K, R] with row stride lda) */
#define ROWS_OF(name, a_t)                                                                                   \
    static void name(int R, int N, int K, const float *A, int lda, const float *B, int ldb, const float *bias, \
                     float *C, int ldc, int mode) {                                                          \
        switch (R) {                                                                                         \
        case 6: rows(6, a_t, N, K, A, lda, B, ldb, bias, C, ldc, mode); break;                               \
        case 5: rows(5, a_t, N, K, A, lda, B, ldb, bias, C, ldc, mode); break;                               \
        case 4: rows(4, a_t, N, K, A, lda, B, ldb, bias, C, ldc, mode); break;                               \
        case 3: rows(3, a_t, N, K, A, lda, B, ldb, bias, C, ldc, mode); break;                               \
        case 2: rows(2, a_t, N, K, A, lda, B, ldb, bias, C, ldc, mode); break;                               \
        case 1: rows(1, a_t, N, K, A, lda, B, ldb, bias, C, ldc, mode); break;                               \
        default: break;                                                                                      \
        }                                                                                                    \
    }
ROWS_OF(rows_of, 0)
ROWS_OF(rows_of_t, 1)

/* C[M, N] (+)= A[M, K] B[K, N] (+ bias), row strides lda, ldb, ldc; mode: ACCUMULATE and / or GELU */
static void gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, const float *bias,
                 float *C, int ldc, int mode) {
    for (int i = 0; i < M; i += 6)
        rows_of(M - i < 6 ? M - i : 6, N, K, A + (long)i * lda, lda, B, ldb, bias, C + (long)i * ldc, ldc, mode);
}

/* the same with A stored transposed: A^T is [K, M], row stride lda */
static void gemm_t(int M, int N, int K, const float *A_t, int lda, const float *B, int ldb, float *C, int ldc,
                   int mode) {
    for (int i = 0; i < M; i += 6)
        rows_of_t(M - i < 6 ? M - i : 6, N, K, A_t + i, lda, B, ldb, NULL, C + (long)i * ldc, ldc, mode);
}

static void layer_norm(int rows, int D, const float *x, int ldx, const float *g, const float *b, float eps,
                       float *y, int ldy) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (long)r * ldx;
        float *yr = y + (long)r * ldy;
        int d = 0;
        float sum = 0.0f, sq = 0.0f;
#if defined(__AVX512F__) /* 16 lanes first where there are 512-bit registers */
        v16 acc16 = {0};
        for (; d + 16 <= D; d += 16) acc16 += ld16(xr + d);
        sum = _mm512_reduce_add_ps((__m512)acc16);
#endif
        v8 acc = {0};
        for (; d + 8 <= D; d += 8) acc += ld(xr + d);
        sum += hsum(acc);
        for (; d < D; d++) sum += xr[d];
        float mean = sum / D;
        d = 0;
#if defined(__AVX512F__)
        v16 m16 = bc16(mean);
        acc16 = (v16){0};
        for (; d + 16 <= D; d += 16) { v16 c = ld16(xr + d) - m16; acc16 += c * c; }
        sq = _mm512_reduce_add_ps((__m512)acc16);
#endif
        v8 m = bc(mean);
        acc = (v8){0};
        for (; d + 8 <= D; d += 8) { v8 c = ld(xr + d) - m; acc += c * c; }
        sq += hsum(acc);
        for (; d < D; d++) { float c = xr[d] - mean; sq += c * c; }
        float inv = 1.0f / sqrtf(sq / D + eps);
        d = 0;
#if defined(__AVX512F__)
        v16 vi16 = bc16(inv);
        for (; d + 16 <= D; d += 16) st16(yr + d, (ld16(xr + d) - m16) * vi16 * ld16(g + d) + ld16(b + d));
#endif
        v8 vi = bc(inv);
        for (; d + 8 <= D; d += 8) st(yr + d, (ld(xr + d) - m) * vi * ld(g + d) + ld(b + d));
        for (; d < D; d++) yr[d] = (xr[d] - mean) * inv * g[d] + b[d];
    }
}

/* in place: s[0 .. valid) <- exp((s - max) * scale), s[valid .. width) <- 0; returns their sum (the
 * caller divides the weighted values by it: one pass over the scores fewer) */
static float softmax_row(float *s, int valid, int width, float scale) {
    int j = 0;
    float m = -INFINITY, sum = 0.0f;
#if defined(__AVX512F__) /* 16 lanes first where there are 512-bit registers */
    v16 m16 = bc16(-INFINITY);
    for (; j + 16 <= valid; j += 16) m16 = vmax16(m16, ld16(s + j));
    m = _mm512_reduce_max_ps((__m512)m16);
#endif
    v8 m8 = bc(m);
    for (; j + 8 <= valid; j += 8) m8 = vmax(m8, ld(s + j));
    m = hmax(m8);
    for (; j < valid; j++) m = s[j] > m ? s[j] : m;
    j = 0;
#if defined(__AVX512F__)
    v16 vm16 = bc16(m), vs16 = bc16(scale), acc16 = {0};
    for (; j + 16 <= valid; j += 16) {
        v16 e = vexp16((ld16(s + j) - vm16) * vs16);
        st16(s + j, e);
        acc16 += e;
    }
    sum = _mm512_reduce_add_ps((__m512)acc16);
#endif
    v8 vm = bc(m), vs = bc(scale), acc = {0};
    for (; j + 8 <= valid; j += 8) {
        v8 e = vexp((ld(s + j) - vm) * vs);
        st(s + j, e);
        acc += e;
    }
    sum += hsum(acc);
    for (; j < valid; j++) { s[j] = sexp((s[j] - m) * scale); sum += s[j]; }
    for (; j < width; j++) s[j] = 0.0f;
    return sum;
}

#define QUERY_TILE 6

/* row stride of K^T and of the scores: a multiple of 16 floats, so that every 16-key slice of a row
 * is one 64-byte cache line (with 200 keys, 8% faster products than at 200) */
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

/* Threads and their scratch. recsys/kernels/cpu_encoder.py hands over GOMP_parallel of the OpenMP
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

/* The tile sizes the Python side needs (flop counts, padding): read from here, never copied by hand. */
int recsys_tile_constants(int64_t *out) {
    out[0] = QUERY_TILE;
    out[1] = RANK_CHUNK;
    out[2] = CE_POSITIONS;
    return 0;
}
