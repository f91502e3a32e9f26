/*
 * attention_cpu_tile.h: the hot part of the CPU attention, included three times by
 * attention_cpu.c: for the baseline ISA (4 wide), AVX2+FMA (8) and AVX-512 (16)
 * (FAB__T(name) gives each copy its own names; FAB__VL is the vector length).
 *
 * Everything here works on f32 tiles in per-thread scratch: BQ query rows by
 * BK keys, head_dim padded to dp (a multiple of 16) with zeros, so the one
 * matrix micro-kernel below needs no edge cases. Scores are kept in log2 units
 * (s * log2(e)) so the softmax uses exp2.
 */

typedef float FAB__T(vf) __attribute__((vector_size(FAB__VL * 4)));

static inline FAB__T(vf) FAB__T(vload)(const float *p)
{
    FAB__T(vf) v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void FAB__T(vstore)(float *p, FAB__T(vf) v) { memcpy(p, &v, sizeof v); }

/* x in every lane (scalar - vector broadcasts x; subtracting +0 is exact for every
 * x, -0 and NaN included, so the compiler drops it and one broadcast is left) */
static inline FAB__T(vf) FAB__T(splat)(float x) { return x - (FAB__T(vf)){0}; }

/* One register block of mm: C[4 x NV vectors] (+)= A[4 x kk] * B[kk x NV vectors],
 * for NV = 4, 3, 2, 1: 4 x NV accumulators, NV vectors of B and one broadcast stay
 * in registers (NV = 3: all 16 AVX2 registers; NV = 4, AVX-512 only: 21 of its 32). FAB__MM_V(X) applies X to each
 * vector index below NV; the code is spelled out per NV because GCC keeps arrays
 * of vectors in memory. */
#define FAB__MM_BLOCK(NV, FAB__MM_V)                                                                          \
    static void FAB__T(mm_block##NV)(int kk, const float *A, int a_rs, int a_cs, const float *B, int ldb, float *C, \
                                     int ldc, int accumulate)                                                   \
    {                                                                                                           \
        typedef FAB__T(vf) vf;                                                                                  \
        vf c0_0, c1_0, c2_0, c3_0;                                                                              \
        __attribute__((unused)) vf c0_1, c0_2, c0_3, c1_1, c1_2, c1_3, c2_1, c2_2, c2_3, c3_1, c3_2,            \
            c3_3; /* used when NV > 1 */                                                                        \
        FAB__MM_V(FAB__MM_INIT)                                                                                 \
        const float *a0 = A, *a1 = A + a_rs, *a2 = A + 2 * (size_t)a_rs, *a3 = A + 3 * (size_t)a_rs;          \
        for (int c = 0; c < kk; c++) {                                                                          \
            const float *b = B + c * ldb;                                                                       \
            const size_t e = (size_t)c * a_cs;                                                                  \
            FAB__MM_V(FAB__MM_LOAD_B)                                                                           \
            vf x = FAB__T(splat)(a0[e]); /* one broadcast at a time: 4 NV + NV + 1 registers */                       \
            FAB__MM_V(FAB__MM_FMA0)                                                                             \
            x = FAB__T(splat)(a1[e]);                                                                                \
            FAB__MM_V(FAB__MM_FMA1)                                                                             \
            x = FAB__T(splat)(a2[e]);                                                                                \
            FAB__MM_V(FAB__MM_FMA2)                                                                             \
            x = FAB__T(splat)(a3[e]);                                                                                \
            FAB__MM_V(FAB__MM_FMA3)                                                                             \
        }                                                                                                       \
        FAB__MM_V(FAB__MM_STORE)                                                                                \
    }
#define FAB__MM_INIT(v)                                                                                         \
    c0_##v = accumulate ? FAB__T(vload)(C + 0 * ldc + v * FAB__VL) : (vf){0};                                   \
    c1_##v = accumulate ? FAB__T(vload)(C + 1 * ldc + v * FAB__VL) : (vf){0};                                   \
    c2_##v = accumulate ? FAB__T(vload)(C + 2 * ldc + v * FAB__VL) : (vf){0};                                   \
    c3_##v = accumulate ? FAB__T(vload)(C + 3 * ldc + v * FAB__VL) : (vf){0};
#define FAB__MM_LOAD_B(v) const vf b##v = FAB__T(vload)(b + v * FAB__VL);
#define FAB__MM_FMA0(v) c0_##v += b##v * x;
#define FAB__MM_FMA1(v) c1_##v += b##v * x;
#define FAB__MM_FMA2(v) c2_##v += b##v * x;
#define FAB__MM_FMA3(v) c3_##v += b##v * x;
#define FAB__MM_STORE(v)                                                                                        \
    FAB__T(vstore)(C + 0 * ldc + v * FAB__VL, c0_##v), FAB__T(vstore)(C + 1 * ldc + v * FAB__VL, c1_##v);       \
    FAB__T(vstore)(C + 2 * ldc + v * FAB__VL, c2_##v), FAB__T(vstore)(C + 3 * ldc + v * FAB__VL, c3_##v);
#define FAB__MM_V4(X) X(0) X(1) X(2) X(3)
#define FAB__MM_V3(X) X(0) X(1) X(2)
#define FAB__MM_V2(X) X(0) X(1)
#define FAB__MM_V1(X) X(0)
#if FAB__VL >= 16
FAB__MM_BLOCK(4, FAB__MM_V4)
#endif
FAB__MM_BLOCK(3, FAB__MM_V3)
FAB__MM_BLOCK(2, FAB__MM_V2)
FAB__MM_BLOCK(1, FAB__MM_V1)
#undef FAB__MM_BLOCK
#undef FAB__MM_INIT
#undef FAB__MM_LOAD_B
#undef FAB__MM_FMA0
#undef FAB__MM_FMA1
#undef FAB__MM_FMA2
#undef FAB__MM_FMA3
#undef FAB__MM_STORE
#undef FAB__MM_V4
#undef FAB__MM_V3
#undef FAB__MM_V2
#undef FAB__MM_V1

/* C[m x n] (+)= A[m x kk] * B[kk x n], f32; B and C row-major with leading
 * dims, element (i, c) of A at A[i*a_rs + c*a_cs] (a_cs = 1: A row-major;
 * a_rs = 1: A stored transposed, so P^T dO needs no transpose of P).
 * m % 4 == 0, n % VL == 0 (n is BK or dp, multiples of 16). Register blocks of 4
 * rows x 3 vectors (AVX-512: 4 vectors, so that 64, 128 and 256 columns need no
 * narrower block, whose fewer FMAs per broadcast and load run slower; the last of a
 * row 3, 2 or 1 vectors): the accumulators stay in registers over the whole kk
 * loop, A broadcast, B streamed. Each element of C is one chain of FMAs in the
 * order of kk, whatever the block it falls in. */
static void FAB__T(mm)(int m, int n, int kk, const float *A, int a_rs, int a_cs, const float *B, int ldb, float *C,
                       int ldc, int accumulate)
{
    for (int i = 0; i < m; i += 4) {
        const float *Ai = A + (size_t)i * a_rs;
        float *Ci = C + (size_t)i * ldc;
        int j = 0;
#if FAB__VL >= 16
        for (; j + 4 * FAB__VL <= n; j += 4 * FAB__VL)
            FAB__T(mm_block4)(kk, Ai, a_rs, a_cs, B + j, ldb, Ci + j, ldc, accumulate);
        if (n - j == 3 * FAB__VL)
            FAB__T(mm_block3)(kk, Ai, a_rs, a_cs, B + j, ldb, Ci + j, ldc, accumulate);
#else
        for (; j + 3 * FAB__VL <= n; j += 3 * FAB__VL)
            FAB__T(mm_block3)(kk, Ai, a_rs, a_cs, B + j, ldb, Ci + j, ldc, accumulate);
#endif
        if (n - j == 2 * FAB__VL)
            FAB__T(mm_block2)(kk, Ai, a_rs, a_cs, B + j, ldb, Ci + j, ldc, accumulate);
        else if (n - j == FAB__VL)
            FAB__T(mm_block1)(kk, Ai, a_rs, a_cs, B + j, ldb, Ci + j, ldc, accumulate);
    }
}

/* Rows row0 .. row0+n-1 of head h as f32 into dst[npad x dp]; padding zeroed.
 * The conversions are cpu_dtype.h's row helpers (a vectorised shift for bf16,
 * F16C for f16 where the CPU has it). */
static void FAB__T(load)(const fab__attn_view *v, fab_dtype dt, int64_t b, int64_t row0, int n, int npad, int64_t h,
                         int64_t d, int dp, float *dst)
{
    for (int r = 0; r < n; r++) {
        float *o = dst + (size_t)r * dp;
        fab__load_row_f32((const char *)v->data + elem(v, b, row0 + r, h) * (int64_t)fab_dtype_size(dt), dt, (int)d, o);
        for (int64_t c = d; c < dp; c++)
            o[c] = 0;
    }
    if (npad > n)
        memset(dst + (size_t)n * dp, 0, sizeof(float) * (size_t)(npad - n) * (size_t)dp);
}

#if FAB__VL >= 8
/* o[c][r] = s[r][c] for one 8 x 8 block (row strides cols and rows): the unpack /
 * shuffle / lane-swap sequence in 8-wide registers. */
static inline void FAB__T(transpose8)(const float *s, int cols, float *o, int rows)
{
    typedef float v8 __attribute__((vector_size(32)));
    v8 r0, r1, r2, r3, r4, r5, r6, r7;
    memcpy(&r0, s, 32), memcpy(&r1, s + cols, 32), memcpy(&r2, s + 2 * cols, 32), memcpy(&r3, s + 3 * cols, 32);
    memcpy(&r4, s + 4 * cols, 32), memcpy(&r5, s + 5 * cols, 32), memcpy(&r6, s + 6 * cols, 32);
    memcpy(&r7, s + 7 * cols, 32);
    /* interleave row pairs: t0 = a00 a10 a01 a11 | a04 a14 a05 a15 */
#define FAB__LO(x, y) __builtin_shufflevector(x, y, 0, 8, 1, 9, 4, 12, 5, 13)
#define FAB__HI(x, y) __builtin_shufflevector(x, y, 2, 10, 3, 11, 6, 14, 7, 15)
    v8 t0 = FAB__LO(r0, r1), t1 = FAB__HI(r0, r1), t2 = FAB__LO(r2, r3), t3 = FAB__HI(r2, r3);
    v8 t4 = FAB__LO(r4, r5), t5 = FAB__HI(r4, r5), t6 = FAB__LO(r6, r7), t7 = FAB__HI(r6, r7);
#undef FAB__LO
#undef FAB__HI
    /* pairs of pairs: u0 = column 0 of rows 0-3 | column 4 of rows 0-3 */
#define FAB__LO(x, y) __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13)
#define FAB__HI(x, y) __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15)
    v8 u0 = FAB__LO(t0, t2), u1 = FAB__HI(t0, t2), u2 = FAB__LO(t1, t3), u3 = FAB__HI(t1, t3);
    v8 u4 = FAB__LO(t4, t6), u5 = FAB__HI(t4, t6), u6 = FAB__LO(t5, t7), u7 = FAB__HI(t5, t7);
#undef FAB__LO
#undef FAB__HI
    /* 128-bit halves: rows 0-3 and 4-7 of one column */
#define FAB__LO(x, y) __builtin_shufflevector(x, y, 0, 1, 2, 3, 8, 9, 10, 11)
#define FAB__HI(x, y) __builtin_shufflevector(x, y, 4, 5, 6, 7, 12, 13, 14, 15)
    v8 w[8] = {FAB__LO(u0, u4), FAB__LO(u1, u5), FAB__LO(u2, u6), FAB__LO(u3, u7),
               FAB__HI(u0, u4), FAB__HI(u1, u5), FAB__HI(u2, u6), FAB__HI(u3, u7)};
#undef FAB__LO
#undef FAB__HI
    for (int k = 0; k < 8; k++)
        memcpy(o + (size_t)k * rows, &w[k], 32);
}
#endif

/* dst[c][r] = src[r][c] for src [rows x cols], both multiples of VL (and of 8):
 * 8 x 8 blocks transposed in registers where the ISA has 8-wide vectors (the
 * AVX-512 copy too: its 16-wide shuffles would buy little here), 4 x 4 blocks
 * otherwise; a scalar loop would be one store per element. */
static void FAB__T(transpose)(const float *src, int rows, int cols, float *dst)
{
#if FAB__VL >= 8
    for (int r = 0; r < rows; r += 8)
        for (int c = 0; c < cols; c += 8)
            FAB__T(transpose8)(src + (size_t)r * cols + c, cols, dst + (size_t)c * rows + r, rows);
#else /* VL == 4 */
    typedef FAB__T(vf) vf;
    for (int r = 0; r < rows; r += FAB__VL)
        for (int c = 0; c < cols; c += FAB__VL) {
            const float *s = src + (size_t)r * cols + c;
            float *o = dst + (size_t)c * rows + r;
            vf r0 = FAB__T(vload)(s), r1 = FAB__T(vload)(s + cols);
            vf r2 = FAB__T(vload)(s + 2 * cols), r3 = FAB__T(vload)(s + 3 * cols);
            vf t0 = __builtin_shufflevector(r0, r1, 0, 4, 1, 5), t1 = __builtin_shufflevector(r0, r1, 2, 6, 3, 7);
            vf t2 = __builtin_shufflevector(r2, r3, 0, 4, 1, 5), t3 = __builtin_shufflevector(r2, r3, 2, 6, 3, 7);
            FAB__T(vstore)(o, __builtin_shufflevector(t0, t2, 0, 1, 4, 5));
            FAB__T(vstore)(o + rows, __builtin_shufflevector(t0, t2, 2, 3, 6, 7));
            FAB__T(vstore)(o + 2 * rows, __builtin_shufflevector(t1, t3, 0, 1, 4, 5));
            FAB__T(vstore)(o + 3 * rows, __builtin_shufflevector(t1, t3, 2, 3, 6, 7));
        }
#endif
}

/* The same rows transposed into dst[dp x BK] (column r = row r; padding zeroed),
 * through tmp [BK x dp]. */
static void FAB__T(load_t)(const fab__attn_view *v, fab_dtype dt, int64_t b, int64_t row0, int n, int64_t h,
                           int64_t d, int dp, float *tmp, float *dst)
{
    FAB__T(load)(v, dt, b, row0, n, FAB__BK, h, d, dp, tmp);
    FAB__T(transpose)(tmp, FAB__BK, dp, dst);
}

/* Rows of src[n x dp] rounded into the output rows row0.. of head h. */
static void FAB__T(store)(const fab__attn_view *v, fab_dtype dt, int64_t b, int64_t row0, int n, int64_t h,
                          int64_t d, int dp, const float *src)
{
    for (int r = 0; r < n; r++) {
        fab__store_row_f32((char *)v->data + elem(v, b, row0 + r, h) * (int64_t)fab_dtype_size(dt), dt, (int)d,
                           src + (size_t)r * dp);
    }
}

/* Asks for rows row0 .. row0+n-1 of head h (d elements of es bytes each) to be
 * brought into the cache: the next key tile's K or V, while this tile computes
 * (their rows are strided by the other heads, which the hardware prefetchers
 * follow poorly). */
static inline __attribute__((always_inline)) void FAB__T(prefetch_rows)(const fab__attn_view *v, size_t es, int64_t b, int64_t row0, int n, int64_t h,
                                  int64_t d)
{
    for (int r = 0; r < n; r++) {
        const char *p = (const char *)v->data + (size_t)elem(v, b, row0 + r, h) * es;
        for (size_t o = 0; o < (size_t)d * es; o += 64)
            __builtin_prefetch(p + o);
        __builtin_prefetch(p + (size_t)d * es - 1); /* the last line, when the row does not start one */
    }
}

/* 2^x of each lane, for x <= 0 (larger x is fine up to 127), about 1 ulp: x = n + f
 * with n an integer and |f| <= 1/2, 2^f by its degree-6 Taylor polynomial in f*ln2
 * (error < 2e-7 relative), times 2^n. x <= -125 (-inf and NaN too) gives exactly
 * 0, and no lane ever forms a subnormal: an Intel core takes a microcode assist
 * of a hundred cycles or more for each instruction with a subnormal or underflowing
 * result (FTZ is off here). A vscalefps left to underflow -inf (the masked scores
 * of every causal diagonal tile) to 0 did exactly that: it cost the causal forward
 * a tenth of its time. Nothing is lost: every exponent here is relative to a row's
 * largest term, 2^0 = 1, beside which 2^-125 vanishes.
 * AVX-512 has both ends as one instruction each: vrndscaleps rounds x to n and
 * vscalefps multiplies by 2^n, zero-masked where x <= -125. Elsewhere: n by the
 * 1.5*2^23 rounding trick and 2^n through the exponent bits, x <= -125 replaced by
 * -127, whose exponent bits give 0. */
static inline FAB__T(vf) FAB__T(exp2v)(FAB__T(vf) x)
{
    typedef FAB__T(vf) vf;
#if FAB__VL == 16
    const __mmask16 live = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-125.0f), _CMP_GT_OQ); /* NaN: 0 */
    const vf nf = (vf)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = x - nf;
#else
    typedef int32_t vi __attribute__((vector_size(FAB__VL * 4)));
    typedef uint32_t vu __attribute__((vector_size(FAB__VL * 4)));
    const vf magic = FAB__T(splat)(12582912.0f); /* 1.5 * 2^23 */
    const vi in = x > FAB__T(splat)(-125.0f);      /* NaN: false */
    x = (vf)(((vi)x & in) | ((vi)FAB__T(splat)(-127.0f) & ~in));
    const vf nf = (x + magic) - magic, f = x - nf;
#endif
    vf p = FAB__T(splat)(1.5403530393381606e-4f);      /* ln2^6 / 720 */
    p = p * f + FAB__T(splat)(1.3333558146428443e-3f); /* ln2^5 / 120 */
    p = p * f + FAB__T(splat)(9.6181291076284772e-3f); /* ln2^4 / 24 */
    p = p * f + FAB__T(splat)(5.5504108664821580e-2f); /* ln2^3 / 6 */
    p = p * f + FAB__T(splat)(2.4022650695910071e-1f); /* ln2^2 / 2 */
    p = p * f + FAB__T(splat)(6.9314718055994531e-1f); /* ln2 */
    p = p * f + FAB__T(splat)(1.0f);
#if FAB__VL == 16
    return (vf)_mm512_maskz_scalef_ps(live, (__m512)p, (__m512)nf);
#else
    const vi n = __builtin_convertvector(nf, vi);
    const vu bits = (vu)(n + 127) << 23; /* n + 127 in {0} and [2, 254]: n = -127 gives 0.0f */
    vf scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
#endif
}

/* The keys of the tile starting at key j0 (nk of them) that the query at position
 * pos (key coordinates: query row + sk - sq) may see, as tile columns [*lo, *hi);
 * empty (lo >= hi) where it sees none. */
static inline void FAB__T(row_keys)(const fab__attn_args *a, int64_t pos, int64_t j0, int nk, int64_t *lo,
                                    int64_t *hi)
{
    *lo = 0, *hi = nk;
    if (a->left >= 0 && pos - a->left - j0 > *lo)
        *lo = pos - a->left - j0;
    if (a->right >= 0 && pos + a->right + 1 - j0 < *hi)
        *hi = pos + a->right + 1 - j0;
}

/* One row of raw scores s = q.K^T turned into log2-unit logits in place:
 * scale*x (or softcap*tanh(scale*x/softcap)), times log2(e), for the columns
 * [lo, hi); -inf elsewhere. With softcap, t (when not NULL) receives tanh(.) for
 * the backward's chain rule. */
static void FAB__T(logits_row)(const fab__attn_args *a, float *s, float *t, int64_t lo, int64_t hi)
{
    const float scale = a->scale, cap = a->softcap;
    const float l2e = 1.4426950408889634f;
    if (cap > 0) {
        for (int j = 0; j < FAB__BK; j++) {
            float th = tanhf(s[j] * scale / cap);
            if (t)
                t[j] = th;
            s[j] = (j >= lo && j < hi) ? cap * th * l2e : -INFINITY;
        }
    } else {
        const float k = scale * l2e;
#pragma omp simd
        for (int j = 0; j < FAB__BK; j++)
            s[j] = (j >= lo && j < hi) ? s[j] * k : -INFINITY;
    }
}

/* logits_row over the rows of a tile (nqp of them, the real ones nq; the rows
 * past nq all -inf). */
static void FAB__T(logits)(const fab__attn_args *a, float *S, float *T, int nq, int nqp, int nk, int64_t i0,
                           int64_t j0, int64_t off)
{
    for (int i = 0; i < nqp; i++) {
        int64_t lo, hi;
        FAB__T(row_keys)(a, i0 + i + off, j0, nk, &lo, &hi);
        if (i >= nq)
            hi = 0;
        FAB__T(logits_row)(a, S + i * FAB__BK, T ? T + i * FAB__BK : NULL, lo, hi);
    }
}

/* max(m, s[0], ..., s[BK-1]), NaNs ignored: lane-wise maxima, then across the lanes
 * (a max is exact, so the order does not matter). */
static inline float FAB__T(row_max)(const float *s, float m)
{
    typedef FAB__T(vf) vf;
    typedef int32_t vi __attribute__((vector_size(FAB__VL * 4)));
    vf mv = FAB__T(splat)(m);
    for (int j = 0; j < FAB__BK; j += FAB__VL) {
        vf x = FAB__T(vload)(s + j);
        vi gt = x > mv;
        mv = (vf)(((vi)x & gt) | ((vi)mv & ~gt));
    }
    /* across the lanes by halves (butterfly shuffles: lane l meets lane l ^ w), not
     * one lane after another (a chain of 16 dependent maxima cost a sixth of the
     * forward's softmax at head dim 64) */
#define FAB__HMAX_STEP(...)                                                                                     \
    {                                                                                                           \
        const vf o = __builtin_shufflevector(mv, mv, __VA_ARGS__); /* GCC 12+, clang */                         \
        const vi gt = o > mv;                                                                                   \
        mv = (vf)(((vi)o & gt) | ((vi)mv & ~gt));                                                               \
    }
#if FAB__VL == 16
    FAB__HMAX_STEP(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)
    FAB__HMAX_STEP(4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)
    FAB__HMAX_STEP(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)
    FAB__HMAX_STEP(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14)
#elif FAB__VL == 8
    FAB__HMAX_STEP(4, 5, 6, 7, 0, 1, 2, 3)
    FAB__HMAX_STEP(2, 3, 0, 1, 6, 7, 4, 5)
    FAB__HMAX_STEP(1, 0, 3, 2, 5, 4, 7, 6)
#else
    FAB__HMAX_STEP(2, 3, 0, 1)
    FAB__HMAX_STEP(1, 0, 3, 2)
#endif
#undef FAB__HMAX_STEP
    return mv[0];
}

/* The forward's online-softmax step over one tile of raw scores S [BQ x BK], for
 * its rows [r0, r1) (the others see none of its keys: their m, l and O stay as
 * they are): the new row maxima mx (log2 units), P = exp2(logit - mx) in place of
 * S, l = alpha l + rowsum(P) and O = alpha O with alpha = exp2(m - mx). Rows past
 * nq (padding) and rows with no key get P = 0.
 * Where a row sees every key of the tile and there is no softcap, the logits are
 * not written out: its maximum is taken over the raw scores (times k = scale
 * log2(e) > 0, which keeps the order) and P = exp2(s k - mx) (one fma in the AVX
 * copies, which contract; two roundings in the portable one), one pass over the
 * row fewer. Other rows take logits_row first (then k = 1, and s k - mx is an
 * exact s - mx).
 * Each pass runs over all the rows before the next starts, so that the rows'
 * dependency chains (the horizontal max, alpha's exp2) overlap instead of
 * queueing one row behind the other: the maxima, then alpha for VL rows per
 * exp2v, then P. scratch: 3 BQ floats. */
static void FAB__T(fwd_softmax)(const fab__attn_args *a, float *S, int r0, int r1, int nq, int nk, int64_t pos0,
                                int64_t j0, float *m, float *l, float *O, int dp, float *scratch)
{
    typedef FAB__T(vf) vf;
    float *mx = scratch, *alpha = mx + FAB__BQ, *kr = alpha + FAB__BQ; /* kr: the multiplier inside exp2 */
    const float k = a->scale * 1.4426950408889634f;
    const int plain = a->softcap <= 0 && k > 0;
    if (r1 > nq) {
        memset(S + nq * FAB__BK, 0, sizeof(float) * (size_t)((r1 - nq) * FAB__BK)); /* padding rows */
        r1 = nq;
    }
    for (int i = r0; i < r1; i++) {
        float *s = S + i * FAB__BK;
        int64_t lo, hi;
        FAB__T(row_keys)(a, pos0 + i, j0, nk, &lo, &hi);
        if (plain && lo <= 0 && hi >= FAB__BK) {
            const float rmx = FAB__T(row_max)(s, -INFINITY) * k;
            mx[i] = rmx > m[i] ? rmx : m[i];
            kr[i] = k;
        } else {
            FAB__T(logits_row)(a, s, NULL, lo, hi);
            mx[i] = FAB__T(row_max)(s, m[i]);
            kr[i] = 1.0f;
        }
        if (mx[i] == -INFINITY) /* no key of this row in the tile, nor before: P = 0 */
            kr[i] = 0.0f;
    }
    /* alpha in whole vectors: the rows of [a0, a1) outside [r0, r1) (r0 is a
     * multiple of 4, not of VL) get mx = m, a defined input whose alpha is unused */
    const int a0 = r0 & ~(FAB__VL - 1), a1 = (r1 + FAB__VL - 1) & ~(FAB__VL - 1);
    for (int i = a0; i < r0; i++)
        mx[i] = m[i];
    for (int i = r1; i < a1; i++)
        mx[i] = m[i];
    for (int i = a0; i < a1; i += FAB__VL)
        FAB__T(vstore)(alpha + i, FAB__T(exp2v)(FAB__T(vload)(m + i) - FAB__T(vload)(mx + i)));
    for (int i = r0; i < r1; i++) {
        float *s = S + i * FAB__BK;
        if (kr[i] == 0.0f) {
            memset(s, 0, sizeof(float) * FAB__BK);
            continue;
        }
        /* P, and its row sum lane by lane (across the lanes only at the end: an
         * in-order sum of each vector costs more than its exp2) */
        const vf kv = FAB__T(splat)(kr[i]), mxv = FAB__T(splat)(mx[i]);
        vf sumv = FAB__T(splat)(0.0f);
        for (int j = 0; j < FAB__BK; j += FAB__VL) {
            const vf p = FAB__T(exp2v)(FAB__T(vload)(s + j) * kv - mxv);
            FAB__T(vstore)(s + j, p);
            sumv += p;
        }
        FAB__T(vstore)(l + 16 * i, FAB__T(vload)(l + 16 * i) * FAB__T(splat)(alpha[i]) + sumv);
        m[i] = mx[i];
        if (alpha[i] != 1.0f) {
            float *o = O + i * dp;
            const float ai = alpha[i];
#pragma omp simd
            for (int c = 0; c < dp; c++)
                o[c] *= ai;
        }
    }
}

#if FAB__VL >= 16
/* The tile products on AMX (bf16 inputs, dp a multiple of 32; the kernel and the
 * packing are matmul_amx.c's). Forward: Q as four 32-row A panels of dp/32
 * chunks, a key tile's K as two 32-key B panels (k = head dim), its V as dp/32 B
 * panels of 32 columns (k = the 64 keys, each 32-key chunk twice); S = Q K^T in
 * f32. P is f32, and bf16 holds only 8 bits of it: rounding P to bf16, as
 * FlashAttention does on GPUs, costs up to 2^-9 of each term of P V, more than
 * this backend's f32 promise (and its tests) allow. So P = hi + lo, two bf16 (16
 * bits, the rest under 2^-17 of P), and one kernel call adds hi V + lo V: per 32
 * keys the A panel holds hi's chunk then lo's, against V's chunk twice. The
 * backward does the same for s and dP (exact) and for the products of P and dS. */
/* Rows row0 .. row0+n-1 of head h (Q or dO) as four 32-row A panels of dp/32
 * chunks (rows past n zero). */
static void FAB__T(amx_pack_rows)(const fab__attn_view *v, int64_t b, int64_t row0, int n, int64_t h, int64_t d,
                                  int dp, uint16_t *dst)
{
    const uint16_t *src = (const uint16_t *)v->data + elem(v, b, row0, h);
    for (int ip = 0; ip < FAB__BQ / 32; ip++)
        fab__amx_pack_a(src, v->ss, false, 0, n, 0, d, dp / 32, ip, dst);
}

/* Keys row0 .. row0+n-1 of kv head g (K, or V for dP = dO V^T) as two 32-key B
 * panels, k = the head dim (the tile's other keys zero). */
static void FAB__T(amx_pack_keys)(const fab__attn_view *v, int64_t b, int64_t row0, int n, int64_t g, int64_t d,
                                  int dp, uint16_t *dst)
{
    const uint16_t *src = (const uint16_t *)v->data + elem(v, b, row0, g);
    for (int q = 0; q < FAB__BK / 32; q++)
        fab__amx_pack_b(src, v->ss, true, 0, n, 0, d, dp / 32, q, dst);
}

/* Rows row0 .. row0+n-1 of head h (V or K of a key tile, nch = 2; Q or dO of a
 * query tile, nch = 4) as dp/32 B panels of 32 columns, k = the rows (past n
 * zero), each chunk twice in a row (c0 c0 c1 c1 ...): the B side of a hi + lo
 * product, whose A side holds chunk c's hi then its lo. */
static void FAB__T(amx_pack_twice)(const fab__attn_view *v, int64_t b, int64_t row0, int n, int64_t h, int64_t d,
                                   int dp, int nch, uint16_t *dst)
{
    const uint16_t *src = (const uint16_t *)v->data + elem(v, b, row0, h);
    for (int q = 0; q < dp / 32; q++) {
        uint16_t *panel = dst + q * 2 * nch * 1024;
        fab__amx_pack_b(src, v->ss, false, q * 32, d, 0, n, nch, 0, panel);
        /* chunk c to places 2c, 2c+1; from the last, so none is overwritten first */
        for (int c = nch - 1; c >= 0; c--) {
            memcpy(panel + (2 * c + 1) * 1024, panel + c * 1024, 1024 * sizeof(uint16_t));
            if (c > 0)
                memcpy(panel + 2 * c * 1024, panel + c * 1024, 1024 * sizeof(uint16_t));
        }
    }
}

/* The forward's K and V of keys j0 .. j0+n-1 (amx_pack_keys, amx_pack_twice). */
static void FAB__T(amx_pack_kv)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t g, int64_t j0, int n,
                                uint16_t *kp, uint16_t *vp)
{
    FAB__T(amx_pack_keys)(&a->k, sq->b, sq->k0 + j0, n, g, a->d, sq->dp, kp);
    FAB__T(amx_pack_twice)(&a->v, sq->b, sq->k0 + j0, n, g, a->d, sq->dp, FAB__BK / 32, vp);
}

/* hi and lo of 32 floats, the lanes outside `keep` zero: hi = x rounded to bf16,
 * lo = x - hi (exact in f32) rounded; VCVTNE2PS2BF16 (AVX512-BF16, which the AMX
 * probe requires) rounds to nearest even and reads a subnormal as zero, as AMX
 * would anyway. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c"))) static inline void
FAB__T(amx_split32)(const float *x, __mmask32 keep, uint16_t *hi, uint16_t *lo)
{
    const __m512 a = _mm512_maskz_loadu_ps((__mmask16)keep, x);
    const __m512 b = _mm512_maskz_loadu_ps((__mmask16)(keep >> 16), x + 16);
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* a's 16 values first */
    const __m512 ha = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
    const __m512 hb =
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
    _mm512_storeu_si512(hi, h);
    _mm512_storeu_si512(lo, (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha)));
}

/* A panels of X^T for X [BQ x BK] (P or dS; the rows outside [r0, r1) read as
 * zero): per 32-key panel, for each 32-row chunk of k, its hi then its lo (X =
 * hi + lo, as in amx_mul_keys). Only the chunks that hold rows of [r0, r1) are
 * written: amx_grad_keys runs those only. Each 32x32 block is transposed in f32
 * (its bits), then split. */
static void FAB__T(amx_pack_t_hilo)(const float *X, int r0, int r1, uint16_t *dst)
{
    float t[32 * 32] __attribute__((aligned(64)));
    for (int kp = 0; kp < FAB__BK / 32; kp++)
        for (int ch = r0 / 32; ch * 32 < r1; ch++) {
            uint16_t *hi = dst + (kp * 8 + 2 * ch) * 1024, *lo = hi + 1024;
            const int t0 = r0 - ch * 32 > 0 ? r0 - ch * 32 : 0, t1 = r1 - ch * 32 < 32 ? r1 - ch * 32 : 32;
            fab__amx_transpose32_f32(X + ch * 32 * FAB__BK + kp * 32, FAB__BK, t);
            const __mmask32 keep = (__mmask32)(((1ull << t1) - 1) & ~((1ull << t0) - 1));
            for (int r = 0; r < 32; r++)
                FAB__T(amx_split32)(t + r * 32, keep, hi + r * 32, lo + r * 32);
        }
}

/* dX [BK x dp] += X^T Y over the rows [r0, r1) of a query tile: a =
 * amx_pack_t_hilo's panels, b = Y's (Q or dO) by amx_pack_twice with nch 4; two
 * chunks (hi, lo) per 32 rows, only those of [r0, r1) (a causal diagonal tile
 * has half). */
static void FAB__T(amx_grad_keys)(const uint16_t *a, const uint16_t *b, int r0, int r1, int dp, float *dX)
{
    const int c0 = r0 / 32, nch = 2 * ((r1 + 31) / 32 - c0);
    for (int kp = 0; kp < FAB__BK / 32; kp++)
        for (int q = 0; q < dp / 32; q++)
            fab__amx_kernel(nch, a + (kp * 8 + 2 * c0) * 1024, b + (q * 8 + 2 * c0) * 1024,
                            dX + kp * 32 * dp + q * 32, dp, true);
}

/* S [BQ x BK] = Q K^T for the 32-row panels that hold rows [r0, r1). */
static void FAB__T(amx_scores)(const uint16_t *qp, const uint16_t *kp, int nch, int r0, int r1, float *S)
{
    for (int ip = r0 / 32; ip * 32 < r1; ip++)
        for (int q = 0; q < FAB__BK / 32; q++)
            fab__amx_kernel(nch, qp + ip * nch * 1024, kp + q * nch * 1024, S + ip * 32 * FAB__BK + q * 32,
                            FAB__BK, false);
}

/* O += P V (the forward; the backward's dQ += dS K the same way) over the panels
 * that hold rows [r0, r1): P is S's rows [r0, r1) as hi + lo into pp (A panels
 * of four chunks: per 32 keys, hi then lo), V's panels amx_pack_twice's; the
 * panels' other rows are zero there, so their O rows stay as they are. */
static void FAB__T(amx_mul_keys)(const float *S, int r0, int r1, const uint16_t *vp, int dp, uint16_t *pp, float *O)
{
    for (int ip = r0 / 32; ip * 32 < r1; ip++) {
        uint16_t *panel = pp + ip * 4 * 1024;
        for (int ch = 0; ch < 2; ch++)
            for (int r = 0; r < 32; r++) {
                const int i = ip * 32 + r;
                uint16_t *hi = panel + 2 * ch * 1024 + r * 32, *lo = hi + 1024;
                if (i < r0 || i >= r1) {
                    memset(hi, 0, 32 * sizeof(uint16_t));
                    memset(lo, 0, 32 * sizeof(uint16_t));
                    continue;
                }
                FAB__T(amx_split32)(S + i * FAB__BK + ch * 32, 0xffffffffu, hi, lo);
            }
        for (int q = 0; q < dp / 32; q++)
            fab__amx_kernel(4, panel, vp + q * 4 * 1024, O + ip * 32 * dp + q * 32, dp, true);
    }
}
#endif

/* The forward's K^T and V of keys j0 .. j0+n-1 of kv head g into kt and v: f32
 * (through tmp), or with amx packed as bf16 panels (amx_pack_kv). */
static void FAB__T(fwd_load_kv)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t g, int64_t j0, int n,
                                int amx, float *tmp, float *kt, float *v)
{
#if FAB__VL >= 16
    if (amx) {
        FAB__T(amx_pack_kv)(a, sq, g, j0, n, (uint16_t *)kt, (uint16_t *)v);
        return;
    }
#else
    (void)amx;
#endif
    FAB__T(load_t)(&a->k, a->dtype, sq->b, sq->k0 + j0, n, g, a->d, sq->dp, tmp, kt);
    FAB__T(load)(&a->v, a->dtype, sq->b, sq->k0 + j0, n, FAB__BK, g, a->d, sq->dp, v);
}

/* Forward of one query tile (rows i0 .. i0+nq-1 of one sequence and head):
 * online softmax over the key tiles the mask lets it see, at keys that are
 * multiples of BK (a window's first tile is partly masked). Q, O: [BQ x dp];
 * KT: [dp x BK] (keys transposed); V, S: [BK x dp], [BQ x BK]; then tmp [BK x dp]
 * for load_t and fwd_softmax's 3 BQ floats. With a cache (kc not NULL), K^T and
 * V of a key tile come from it, converted there by the first query tile of the
 * thread that needs them; the tiles hold the same values either way. amx (the
 * 16-wide copy only): the products on AMX, Q, K and V packed as bf16 in the same
 * places (the cache's tiles too; V's twice, as many bytes as its f32 tile), P's
 * hi and lo panels after tmp. */
static void FAB__T(fwd_tile)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t h, int64_t i0, int nq,
                             float *ws, fab__kv_cache *kc, int amx)
{
    const int dp = sq->dp, nqp = (nq + 3) & ~3;
    float *Q = ws, *O = Q + FAB__BQ * dp, *KT = O + FAB__BQ * dp, *V = KT + dp * FAB__BK;
    /* l: each row's sum of P lane by lane (16 floats a row, VL used), summed across
     * the lanes once, at the end */
    float *S = V + FAB__BK * dp, *m = S + FAB__BQ * FAB__BK, *l = m + FAB__BQ, *tmp = l + FAB__BQ * 16;
    const int64_t g = h / (a->hq / a->hkv);
    const size_t es = a->dtype == FAB_DTYPE_F32 ? 4 : 2;
#if FAB__VL >= 16
    uint16_t *Pb = (uint16_t *)(tmp + FAB__BK * dp + 3 * FAB__BQ);
    if (amx)
        FAB__T(amx_pack_rows)(&a->q, sq->b, sq->q0 + i0, nq, h, a->d, dp, (uint16_t *)Q);
    else
#else
    (void)amx;
#endif
        FAB__T(load)(&a->q, a->dtype, sq->b, sq->q0 + i0, nq, nqp, h, a->d, dp, Q);
    memset(O, 0, sizeof(float) * (size_t)(nqp * dp));
    for (int i = 0; i < FAB__BQ; i++) {
        m[i] = -INFINITY;
        FAB__T(vstore)(l + 16 * i, FAB__T(splat)(0.0f));
    }
    if (kc && (kc->b != sq->b || kc->g != g)) {
        memset(kc->have, 0, (size_t)((sq->sk + FAB__BK - 1) / FAB__BK));
        kc->b = sq->b, kc->g = g;
    }
    int64_t klo, khi;
    fab__attn_key_range(a, sq->sq, sq->sk, i0, i0 + nq, &klo, &khi);
    for (int64_t j0 = klo / FAB__BK * FAB__BK; j0 < khi; j0 += FAB__BK) {
        int nk = (int)(khi - j0 < FAB__BK ? khi - j0 : FAB__BK);
        const int64_t t = j0 / FAB__BK, j1 = j0 + FAB__BK;
        float *kt = KT, *v = V;
        if (kc) {
            /* the whole tile (up to the sequence's end, past khi perhaps: those
             * columns are masked, those rows of V not read) */
            kt = kc->kt + (size_t)t * (size_t)(dp * FAB__BK), v = kc->v + (size_t)t * (size_t)(dp * FAB__BK);
            if (!kc->have[t]) {
                const int n = (int)(sq->sk - j0 < FAB__BK ? sq->sk - j0 : FAB__BK);
                FAB__T(fwd_load_kv)(a, sq, g, j0, n, amx, tmp, kt, v);
                kc->have[t] = 1;
            }
        } else {
            FAB__T(fwd_load_kv)(a, sq, g, j0, nk, amx, tmp, kt, v);
        }
        /* the next tile's rows, where they will be converted */
        const int nk1 = (kc && j1 < khi && kc->have[t + 1]) ? 0 : (int)(khi - j1 < FAB__BK ? khi - j1 : FAB__BK);
        if (nk1 > 0)
            FAB__T(prefetch_rows)(&a->k, es, sq->b, sq->k0 + j1, nk1, g, a->d);
        /* rows [r0, r1) only (rows_seeing_keys); the others keep m, l and O as
         * they are */
        const int64_t off = sq->sk - sq->sq;
        int r0, r1;
        rows_seeing_keys(a, off, i0, nq, j0, nk, &r0, &r1);
        const int nr = r1 - r0;
#if FAB__VL >= 16
        if (amx)
            FAB__T(amx_scores)((const uint16_t *)Q, (const uint16_t *)kt, dp / 32, r0, r1, S);
        else
#endif
            FAB__T(mm)(nr, FAB__BK, dp, Q + r0 * dp, dp, 1, kt, FAB__BK, S + r0 * FAB__BK, FAB__BK, 0);
        FAB__T(fwd_softmax)(a, S, r0, r1, nq, nk, i0 + off, j0, m, l, O, dp, tmp + FAB__BK * dp);
        if (nk1 > 0)
            FAB__T(prefetch_rows)(&a->v, es, sq->b, sq->k0 + j1, nk1, g, a->d);
#if FAB__VL >= 16
        if (amx)
            FAB__T(amx_mul_keys)(S, r0, r1, (const uint16_t *)v, dp, Pb, O);
        else
#endif
            FAB__T(mm)(nr, dp, nk, S + r0 * FAB__BK, FAB__BK, 1, v, dp, O + r0 * dp, dp, 1);
    }
    /* every row has a key (the entry checks it), so l > 0 */
    for (int i = 0; i < nq; i++) {
        float li = 0;
        for (int v = 0; v < FAB__VL; v++)
            li += l[16 * i + v];
        float inv = 1.0f / li, *o = O + i * dp;
        for (int c = 0; c < dp; c++)
            o[c] *= inv;
        if (a->lse)
            a->lse[sq->b * a->lse_sb + h * a->lse_sh + sq->q0 + i0 + i] =
                (m[i] + log2f(li)) * 0.69314718055994531f;
    }
    FAB__T(store)(&a->out, a->dtype, sq->b, sq->q0 + i0, nq, h, a->d, dp, O);
}

/* Backward of one (query tile, key tile) pair, shared by both passes: from Q, dO
 * [BQ x dp], KT, VT [dp x BK], lse2 (lse in log2 units) and D per row, computes
 * P = exp2(s - lse2) and dS = P (dP - D) * d s / d x into P, dS [BQ x BK]
 * (the derivative with respect to the raw product q.k, scale included), for the
 * rows [*r0, *r1) that see a key of the tile (rows_seeing_keys): the caller's
 * products take those rows only, the others' P and dS being zeros. */
static void FAB__T(bwd_pair)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t i0, int nq, int nqp,
                             int64_t j0, int nk, const float *Q, const float *dO, const float *KT, const float *VT,
                             const fab__amx_tiles *x, const float *lse2, const float *D, float *P, float *dS, float *T,
                             int *r0, int *r1)
{
    const int dp = sq->dp;
    const int64_t off = sq->sk - sq->sq;
    rows_seeing_keys(a, off, i0, nq, j0, nk, r0, r1);
    const int lo = *r0, nr = *r1 - *r0;
#if FAB__VL >= 16
    if (x) { /* s and dP of the bf16 operands on AMX (whole 32-row panels) */
        FAB__T(amx_scores)(x->q, x->k, dp / 32, lo, *r1, P);
        FAB__T(amx_scores)(x->dout, x->v, dp / 32, lo, *r1, dS);
    } else
#else
    (void)x;
#endif
    {
        FAB__T(mm)(nr, FAB__BK, dp, Q + lo * dp, dp, 1, KT, FAB__BK, P + lo * FAB__BK, FAB__BK, 0);
        FAB__T(mm)(nr, FAB__BK, dp, dO + lo * dp, dp, 1, VT, FAB__BK, dS + lo * FAB__BK, FAB__BK, 0);
    }
    FAB__T(logits)(a, P, T, nq, nqp, nk, i0, j0, off);
    const float scale = a->scale, cap = a->softcap;
    for (int i = lo; i < *r1; i++) {
        float *p = P + i * FAB__BK, *ds = dS + i * FAB__BK;
        const FAB__T(vf) L = FAB__T(splat)(lse2[i]), Di = FAB__T(splat)(D[i]), sv = FAB__T(splat)(scale);
        for (int j = 0; j < FAB__BK; j += FAB__VL) {
            const FAB__T(vf) pj = FAB__T(exp2v)(FAB__T(vload)(p + j) - L);
            FAB__T(vstore)(p + j, pj);
            FAB__T(vstore)(ds + j, pj * (FAB__T(vload)(ds + j) - Di) * sv);
        }
        if (cap > 0) {
            const float *t = T + i * FAB__BK;
            for (int j = 0; j < FAB__BK; j++)
                ds[j] *= 1.0f - t[j] * t[j];
        }
    }
}

/* dV += P^T dO and dK += dS^T Q over the rows [r0, r1) of a tile pair: on AMX
 * with x (P and dS as hi + lo), else on the vector units. */
static void FAB__T(bwd_grad_kv)(const fab__amx_tiles *x, const float *P, const float *dS, int r0, int r1,
                                const float *Q, const float *dO, int dp, float *dK, float *dV)
{
#if FAB__VL >= 16
    if (x) {
        if (r1 <= r0)
            return;
        FAB__T(amx_pack_t_hilo)(P, r0, r1, x->hl);
        FAB__T(amx_grad_keys)(x->hl, x->doutb, r0, r1, dp, dV);
        FAB__T(amx_pack_t_hilo)(dS, r0, r1, x->hl);
        FAB__T(amx_grad_keys)(x->hl, x->qb, r0, r1, dp, dK);
        return;
    }
#else
    (void)x;
#endif
    FAB__T(mm)(FAB__BK, dp, r1 - r0, P + r0 * FAB__BK, 1, FAB__BK, dO + r0 * dp, dp, dV, dp, 1);
    FAB__T(mm)(FAB__BK, dp, r1 - r0, dS + r0 * FAB__BK, 1, FAB__BK, Q + r0 * dp, dp, dK, dp, 1);
}

/* dQ (the tile's rows) += dS K over the rows [r0, r1): on AMX with x, else on
 * the vector units. */
static void FAB__T(bwd_grad_q)(const fab__amx_tiles *x, float *dS, int r0, int r1, const float *K, int dp,
                               float *dQ)
{
#if FAB__VL >= 16
    if (x) {
        FAB__T(amx_mul_keys)(dS, r0, r1, x->kb, dp, x->hl, dQ);
        return;
    }
#else
    (void)x;
#endif
    FAB__T(mm)(r1 - r0, dp, FAB__BK, dS + r0 * FAB__BK, FAB__BK, 1, K, dp, dQ + r0 * dp, dp, 1);
}

/* D = rowsum(dO * O) for every row of sequence `sq`, head h, into Dbuf (laid out
 * as lse). Summed in the order, and with the same contraction, as the dP = dO V^T
 * products of the micro-kernel (with amx: of the AMX kernel), so dP - D is
 * exactly 0 where O equals V (one key). ws: 2 BQ dp floats. */
static void FAB__T(bwd_rowdot)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t h, float *Dbuf, float *ws,
                               int amx)
{
    const int dp = sq->dp;
    float *O = ws, *dO = ws + FAB__BQ * dp;
    for (int64_t i = 0; i < sq->sq; i += FAB__BQ) {
        int n = (int)(sq->sq - i < FAB__BQ ? sq->sq - i : FAB__BQ);
        float *D = Dbuf + sq->b * a->lse_sb + h * a->lse_sh + sq->q0 + i;
#if FAB__VL >= 16
        if (amx) {
            /* the diagonal of dO O^T on AMX, summed as the dP = dO V^T products
             * are (amx_scores): dP - D is then exactly 0 here too where O equals V.
             * dO as A panels, O's rows as B panels (as keys), a 32x32 block each. */
            const int nch = dp / 32;
            uint16_t *dop = (uint16_t *)ws, *op = dop + FAB__BQ * dp;
            float *t = (float *)(op + FAB__BQ * dp);
            const uint16_t *o = (const uint16_t *)a->out.data + elem(&a->out, sq->b, sq->q0 + i, h);
            FAB__T(amx_pack_rows)(&a->dout, sq->b, sq->q0 + i, n, h, a->d, dp, dop);
            for (int ip = 0; ip * 32 < n; ip++) {
                fab__amx_pack_b(o, a->out.ss, true, 0, n, 0, a->d, nch, ip, op);
                fab__amx_kernel(nch, dop + ip * nch * 1024, op + ip * nch * 1024, t, 32, false);
                for (int r = 0; r < 32 && ip * 32 + r < n; r++)
                    D[ip * 32 + r] = t[r * 32 + r];
            }
            continue;
        }
#else
        (void)amx;
#endif
        FAB__T(load)(&a->out, a->dtype, sq->b, sq->q0 + i, n, n, h, a->d, dp, O);
        FAB__T(load)(&a->dout, a->dtype, sq->b, sq->q0 + i, n, n, h, a->d, dp, dO);
        for (int row = 0; row < n; row++) {
            float acc = 0;
            for (int c = 0; c < dp; c++)
                acc += dO[row * dp + c] * O[row * dp + c];
            D[row] = acc;
        }
    }
}

/* Loads the query-side tile of the backward: Q, dO, lse2, D for rows i0.. of head h;
 * with x (AMX), Q and dO packed as bf16 A panels there too, and as B panels
 * where x->qb is set (the dK, dV products). */
static void FAB__T(bwd_load_q)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t h, int64_t i0, int nq,
                               int nqp, const float *Dbuf, float *Q, float *dO, float *lse2, float *D,
                               const fab__amx_tiles *x)
{
#if FAB__VL >= 16
    if (!x)
#endif
    { /* the f32 copies only the vector units' products read */
        FAB__T(load)(&a->q, a->dtype, sq->b, sq->q0 + i0, nq, nqp, h, a->d, sq->dp, Q);
        FAB__T(load)(&a->dout, a->dtype, sq->b, sq->q0 + i0, nq, nqp, h, a->d, sq->dp, dO);
    }
#if FAB__VL >= 16
    if (x) {
        FAB__T(amx_pack_rows)(&a->q, sq->b, sq->q0 + i0, nq, h, a->d, sq->dp, x->q);
        FAB__T(amx_pack_rows)(&a->dout, sq->b, sq->q0 + i0, nq, h, a->d, sq->dp, x->dout);
        if (x->qb) {
            FAB__T(amx_pack_twice)(&a->q, sq->b, sq->q0 + i0, nq, h, a->d, sq->dp, FAB__BQ / 32, x->qb);
            FAB__T(amx_pack_twice)(&a->dout, sq->b, sq->q0 + i0, nq, h, a->d, sq->dp, FAB__BQ / 32, x->doutb);
        }
    }
#else
    (void)x;
#endif
    const int64_t base = sq->b * a->lse_sb + h * a->lse_sh + sq->q0 + i0;
    for (int i = 0; i < nqp; i++) {
        lse2[i] = i < nq ? a->lse[base + i] * 1.4426950408889634f : 0;
        D[i] = i < nq ? Dbuf[base + i] : 0;
    }
}

/* dK, dV of one key tile (rows j0.. of kv head g): the sum over the query
 * heads of the group and over the query tiles that see it, in a fixed order. */
static void FAB__T(bwd_kv_tile)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t g, int64_t j0, int nk,
                                const float *Dbuf, float *ws, int amx)
{
    const int dp = sq->dp;
    float *KT = ws, *VT = KT + dp * FAB__BK, *dK = VT + dp * FAB__BK, *dV = dK + FAB__BK * dp;
    float *Q = dV + FAB__BK * dp, *dO = Q + FAB__BQ * dp, *P = dO + FAB__BQ * dp, *dS = P + FAB__BQ * FAB__BK;
    float *T = dS + FAB__BQ * FAB__BK, *lse2 = T + FAB__BQ * FAB__BK, *D = lse2 + FAB__BQ;
    float *tmp = D + FAB__BQ;
    /* AMX: its bf16 operands after tmp (amx_tiles_at) */
    fab__amx_tiles xt = amx_tiles_at(tmp + FAB__BK * dp, FAB__BQ, dp), *x = NULL;
#if FAB__VL >= 16
    if (amx) {
        x = &xt;
        FAB__T(amx_pack_keys)(&a->k, sq->b, sq->k0 + j0, nk, g, a->d, dp, xt.k);
        FAB__T(amx_pack_keys)(&a->v, sq->b, sq->k0 + j0, nk, g, a->d, dp, xt.v);
    } else
#else
    (void)amx, (void)xt;
#endif
    {
        FAB__T(load_t)(&a->k, a->dtype, sq->b, sq->k0 + j0, nk, g, a->d, dp, tmp, KT);
        FAB__T(load_t)(&a->v, a->dtype, sq->b, sq->k0 + j0, nk, g, a->d, dp, tmp, VT);
    }
    memset(dK, 0, sizeof(float) * (size_t)(FAB__BK * dp));
    memset(dV, 0, sizeof(float) * (size_t)(FAB__BK * dp));
    int64_t ilo, ihi;
    query_tiles_of_keys(a, sq, j0, nk, &ilo, &ihi);
    const int64_t r = a->hq / a->hkv;
    for (int64_t h = g * r; h < (g + 1) * r; h++) {
        for (int64_t i0 = ilo; i0 < ihi; i0 += FAB__BQ) {
            int nq = (int)(sq->sq - i0 < FAB__BQ ? sq->sq - i0 : FAB__BQ), nqp = (nq + 3) & ~3;
            FAB__T(bwd_load_q)(a, sq, h, i0, nq, nqp, Dbuf, Q, dO, lse2, D, x);
            int r0, r1;
            FAB__T(bwd_pair)(a, sq, i0, nq, nqp, j0, nk, Q, dO, KT, VT, x, lse2, D, P, dS, T, &r0, &r1);
            FAB__T(bwd_grad_kv)(x, P, dS, r0, r1, Q, dO, dp, dK, dV);
        }
    }
    FAB__T(store)(&a->dk, a->dtype, sq->b, sq->k0 + j0, nk, g, a->d, dp, dK);
    FAB__T(store)(&a->dv, a->dtype, sq->b, sq->k0 + j0, nk, g, a->d, dp, dV);
}

/* The key tile j0 .. j0+nk-1 of kv head g for the products that need K too (dQ):
 * with x (AMX) K and V packed there (K twice more, for dS K), else K, K^T and
 * V^T in f32 (tmp: BK x dp floats). */
static void FAB__T(bwd_load_k)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t g, int64_t j0, int nk,
                               const fab__amx_tiles *x, float *K, float *KT, float *VT, float *tmp)
{
    const int dp = sq->dp;
#if FAB__VL >= 16
    if (x) {
        FAB__T(amx_pack_keys)(&a->k, sq->b, sq->k0 + j0, nk, g, a->d, dp, x->k);
        FAB__T(amx_pack_keys)(&a->v, sq->b, sq->k0 + j0, nk, g, a->d, dp, x->v);
        FAB__T(amx_pack_twice)(&a->k, sq->b, sq->k0 + j0, nk, g, a->d, dp, FAB__BK / 32, x->kb);
        return;
    }
#else
    (void)x;
#endif
    FAB__T(load)(&a->k, a->dtype, sq->b, sq->k0 + j0, nk, FAB__BK, g, a->d, dp, K);
    FAB__T(transpose)(K, FAB__BK, dp, KT);
    FAB__T(load_t)(&a->v, a->dtype, sq->b, sq->k0 + j0, nk, g, a->d, dp, tmp, VT);
}

/* dQ of one query tile: the sum over the key tiles it sees, in order. */
static void FAB__T(bwd_q_tile)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t h, int64_t i0, int nq,
                               const float *Dbuf, float *ws, int amx)
{
    const int dp = sq->dp, nqp = (nq + 3) & ~3;
    float *Q = ws, *dO = Q + FAB__BQ * dp, *dQ = dO + FAB__BQ * dp, *KT = dQ + FAB__BQ * dp;
    float *VT = KT + dp * FAB__BK, *K = VT + dp * FAB__BK, *P = K + FAB__BK * dp, *dS = P + FAB__BQ * FAB__BK;
    float *T = dS + FAB__BQ * FAB__BK, *lse2 = T + FAB__BQ * FAB__BK, *D = lse2 + FAB__BQ, *tmp = D + FAB__BQ;
    const int64_t g = h / (a->hq / a->hkv);
    /* AMX: its bf16 operands after tmp, as bwd_kv_tile's (no B panels of Q, dO) */
    fab__amx_tiles xt = amx_tiles_at(tmp + FAB__BK * dp, FAB__BQ, dp), *x = NULL;
    xt.qb = xt.doutb = NULL;
#if FAB__VL >= 16
    if (amx)
        x = &xt;
#else
    (void)amx;
#endif
    FAB__T(bwd_load_q)(a, sq, h, i0, nq, nqp, Dbuf, Q, dO, lse2, D, x);
    memset(dQ, 0, sizeof(float) * (size_t)(FAB__BQ * dp));
    int64_t klo, khi;
    fab__attn_key_range(a, sq->sq, sq->sk, i0, i0 + nq, &klo, &khi);
    klo = klo / FAB__BK * FAB__BK; /* the key tiles of the dk/dv pass */
    for (int64_t j0 = klo; j0 < khi; j0 += FAB__BK) {
        int nk = (int)(sq->sk - j0 < FAB__BK ? sq->sk - j0 : FAB__BK);
        FAB__T(bwd_load_k)(a, sq, g, j0, nk, x, K, KT, VT, tmp);
        int r0, r1;
        FAB__T(bwd_pair)(a, sq, i0, nq, nqp, j0, nk, Q, dO, KT, VT, x, lse2, D, P, dS, T, &r0, &r1);
        FAB__T(bwd_grad_q)(x, dS, r0, r1, K, dp, dQ);
    }
    FAB__T(store)(&a->dq, a->dtype, sq->b, sq->q0 + i0, nq, h, a->d, dp, dQ);
}

/* The single-pass backward of one (sequence, kv head) unit, FlashAttention-2's
 * loop order: for each key tile, in order, for each query head of the group and
 * each query tile that sees it: P, dS, then dV += P^T dO, dK += dS^T Q and
 * dQ += dS K (5 tile products per pair, against 7 for the two passes). The unit
 * owns every dq row of its group, so dq needs no atomics: its f32 accumulators,
 * and Q, dO, lse, D widened once, live in the task's scratch (rows = sq rounded
 * up to BQ, per query head). Every element sees the same operations in the same
 * order as in bwd_kv_tile and bwd_q_tile, so the two schemes agree bit for bit. */
static void FAB__T(bwd_group)(const fab__attn_args *a, const fab__attn_seq *sq, int64_t g, const float *Dbuf,
                              float *ws, int amx)
{
    const int dp = sq->dp;
    const int64_t r = a->hq / a->hkv, rows = (sq->sq + FAB__BQ - 1) / FAB__BQ * FAB__BQ;
    float *KT = ws, *VT = KT + dp * FAB__BK, *K = VT + dp * FAB__BK, *dK = K + FAB__BK * dp, *dV = dK + FAB__BK * dp;
    float *P = dV + FAB__BK * dp, *dS = P + FAB__BQ * FAB__BK, *T = dS + FAB__BQ * FAB__BK;
    float *Qg = T + FAB__BQ * FAB__BK, *dOg = Qg + r * rows * dp, *dQg = dOg + r * rows * dp;
    float *lse2g = dQg + r * rows * dp, *Dg = lse2g + r * rows;
    /* AMX: the group's operands (amx_tiles_at for all its rows) after Dg; a query
     * tile's own at its row (xr) */
    const fab__amx_tiles xt = amx_tiles_at(Dg + r * rows, r * rows, dp);
    fab__amx_tiles xr = xt, *x = NULL;
#if FAB__VL >= 16
    if (amx)
        x = &xr;
#else
    (void)amx, (void)xr;
#endif
#define FAB__AMX_ROW(row)                                                                                       \
    (xr.q = xt.q + (row) * dp, xr.dout = xt.dout + (row) * dp, xr.qb = xt.qb + 2 * (row) * dp,                 \
     xr.doutb = xt.doutb + 2 * (row) * dp)
    for (int64_t hh = 0; hh < r; hh++)
        for (int64_t i0 = 0; i0 < sq->sq; i0 += FAB__BQ) {
            int nq = (int)(sq->sq - i0 < FAB__BQ ? sq->sq - i0 : FAB__BQ), nqp = (nq + 3) & ~3;
            int64_t row = hh * rows + i0;
            FAB__AMX_ROW(row);
            FAB__T(bwd_load_q)(a, sq, g * r + hh, i0, nq, nqp, Dbuf, Qg + row * dp, dOg + row * dp, lse2g + row,
                               Dg + row, x);
        }
    memset(dQg, 0, sizeof(float) * (size_t)(r * rows * dp));
    for (int64_t j0 = 0; j0 < sq->sk; j0 += FAB__BK) {
        int nk = (int)(sq->sk - j0 < FAB__BK ? sq->sk - j0 : FAB__BK);
        FAB__T(bwd_load_k)(a, sq, g, j0, nk, x, K, KT, VT, dK /* as tmp */);
        memset(dK, 0, sizeof(float) * (size_t)(FAB__BK * dp));
        memset(dV, 0, sizeof(float) * (size_t)(FAB__BK * dp));
        int64_t ilo, ihi;
        query_tiles_of_keys(a, sq, j0, nk, &ilo, &ihi);
        for (int64_t hh = 0; hh < r; hh++) {
            for (int64_t i0 = ilo; i0 < ihi; i0 += FAB__BQ) {
                int nq = (int)(sq->sq - i0 < FAB__BQ ? sq->sq - i0 : FAB__BQ), nqp = (nq + 3) & ~3;
                int64_t row = hh * rows + i0;
                const float *Q = Qg + row * dp, *dO = dOg + row * dp;
                FAB__AMX_ROW(row);
                int r0, r1;
                FAB__T(bwd_pair)(a, sq, i0, nq, nqp, j0, nk, Q, dO, KT, VT, x, lse2g + row, Dg + row, P, dS, T, &r0,
                                 &r1);
                FAB__T(bwd_grad_kv)(x, P, dS, r0, r1, Q, dO, dp, dK, dV);
                FAB__T(bwd_grad_q)(x, dS, r0, r1, K, dp, dQg + row * dp);
            }
        }
        FAB__T(store)(&a->dk, a->dtype, sq->b, sq->k0 + j0, nk, g, a->d, dp, dK);
        FAB__T(store)(&a->dv, a->dtype, sq->b, sq->k0 + j0, nk, g, a->d, dp, dV);
    }
    for (int64_t hh = 0; hh < r; hh++)
        for (int64_t i0 = 0; i0 < sq->sq; i0 += FAB__BQ) {
            int nq = (int)(sq->sq - i0 < FAB__BQ ? sq->sq - i0 : FAB__BQ);
            FAB__T(store)(&a->dq, a->dtype, sq->b, sq->q0 + i0, nq, g * r + hh, a->d, dp, dQg + (hh * rows + i0) * dp);
        }
#undef FAB__AMX_ROW
}
