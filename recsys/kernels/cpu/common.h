/* What every CPU kernel shares: vector types and helpers, the vectorised exp / erf, the register-blocked
 * products, LayerNorm and softmax rows, denormal flushing, threads and their scratch. Included once, by
 * ../cpu_kernels.c (one translation unit, so the compiler inlines these into every kernel). */

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
