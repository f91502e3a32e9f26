/*
 * test_attention.c: fab_attention_forward / fab_attention_backward against a
 * float64 reference that materialises the softmax, for every feature (causal
 * bottom-right, sliding window, softcap, custom scale, GQA/MQA, variable-length
 * batches, sq != sk, head dims 17..256, lengths 0, 1, 17, 128, 1000, strided
 * layouts) and combinations; lse checked; a finite-difference check of the
 * reference backward; bitwise repeatability across runs and thread counts; and
 * every kind of bad argument (status, message, nothing written).
 * With --backend cuda (GPU, or the emulator) the same cases run on the sm80
 * kernels where they apply (bf16/f16, head dims 32, 64, 96, 128, 256),
 * every backward on both CUDA paths (fast: dq by f32 atomics; deterministic), with
 * test_fast_path showing the fast one really runs; test_backend_coverage checks
 * that the rest is refused as unsupported. The CUDA forward runs every case twice,
 * with 16 and with 32 query rows per warp (FAB_ATTN_FWD_WARP_ROWS).
 */
#define _POSIX_C_SOURCE 200809L /* setenv: the CUDA forward's variant */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INVALID FAB_ERR_INVALID_ARGUMENT
#define MAXSEQ 8

/* ------------------------------------------------------------- reference */

/* The problem in a packed layout: q [total_q, hq, d], k, v [total_k, hkv, d];
 * sequence b is rows cu_q[b].. (dense batches use uniform offsets). */
typedef struct ref_problem {
    int nseq;
    int32_t cu_q[MAXSEQ + 1], cu_k[MAXSEQ + 1];
    int64_t hq, hkv, d;
    double scale, softcap;
    int64_t left, right; /* folded: causal sets right = 0; -1 unbounded */
} ref_problem;

static int allowed(const ref_problem *p, int64_t sq, int64_t sk, int64_t i, int64_t j)
{
    int64_t past = j - (i + sk - sq); /* how far key j lies right of row i's diagonal */
    if (p->right >= 0 && past > p->right)
        return 0;
    if (p->left >= 0 && -past > p->left)
        return 0;
    return 1;
}

/* logits of row i of sequence s, head h: s_j (or -inf), and ds/dx_j in dsx */
static void ref_logits(const ref_problem *p, const double *q, const double *k, int s, int64_t h, int64_t i,
                       double *logit, double *dsx)
{
    int64_t sq = p->cu_q[s + 1] - p->cu_q[s], sk = p->cu_k[s + 1] - p->cu_k[s];
    int64_t g = h / (p->hq / p->hkv);
    const double *qi = q + ((p->cu_q[s] + i) * p->hq + h) * p->d;
    for (int64_t j = 0; j < sk; j++) {
        if (!allowed(p, sq, sk, i, j)) {
            logit[j] = -INFINITY;
            dsx[j] = 0;
            continue;
        }
        const double *kj = k + ((p->cu_k[s] + j) * p->hkv + g) * p->d;
        double x = 0;
        for (int64_t c = 0; c < p->d; c++)
            x += qi[c] * kj[c];
        x *= p->scale;
        if (p->softcap > 0) {
            double t = tanh(x / p->softcap);
            logit[j] = p->softcap * t;
            dsx[j] = (1 - t * t) * p->scale;
        } else {
            logit[j] = x;
            dsx[j] = p->scale;
        }
    }
}

/* softmax of a row in place; returns lse */
static double ref_softmax(double *s, int64_t n)
{
    double m = -INFINITY, sum = 0;
    for (int64_t j = 0; j < n; j++)
        m = fmax(m, s[j]);
    for (int64_t j = 0; j < n; j++)
        sum += (s[j] = exp(s[j] - m));
    for (int64_t j = 0; j < n; j++)
        s[j] /= sum;
    return m + log(sum);
}

static int64_t max_sk(const ref_problem *p)
{
    int64_t m = 1;
    for (int s = 0; s < p->nseq; s++)
        if (p->cu_k[s + 1] - p->cu_k[s] > m)
            m = p->cu_k[s + 1] - p->cu_k[s];
    return m;
}

/* out [total_q, hq, d]; lse [hq, total_q] */
static void ref_forward(const ref_problem *p, const double *q, const double *k, const double *v, double *out,
                        double *lse)
{
    int64_t msk = max_sk(p);
    double *s = malloc(sizeof(double) * (size_t)msk), *dsx = malloc(sizeof(double) * (size_t)msk);
    assert_true(s && dsx);
    int64_t total_q = p->cu_q[p->nseq];
    for (int b = 0; b < p->nseq; b++) {
        int64_t sq = p->cu_q[b + 1] - p->cu_q[b], sk = p->cu_k[b + 1] - p->cu_k[b];
        for (int64_t h = 0; h < p->hq; h++) {
            int64_t g = h / (p->hq / p->hkv);
            for (int64_t i = 0; i < sq; i++) {
                ref_logits(p, q, k, b, h, i, s, dsx);
                int64_t row = p->cu_q[b] + i;
                lse[h * total_q + row] = ref_softmax(s, sk);
                double *o = out + (row * p->hq + h) * p->d;
                for (int64_t c = 0; c < p->d; c++)
                    o[c] = 0;
                for (int64_t j = 0; j < sk; j++) {
                    const double *vj = v + ((p->cu_k[b] + j) * p->hkv + g) * p->d;
                    for (int64_t c = 0; c < p->d; c++)
                        o[c] += s[j] * vj[c];
                }
            }
        }
    }
    free(s);
    free(dsx);
}

/* Gradients; D_i = dout_i . out_i with the `out` given (as the kernels do). */
/* The float64 backward. With mdq, mdk, mdv (optional, all or none): the size of
 * the terms each gradient element sums, for fab_test_check_close_mag: dS = P (dP - D)
 * cancels (to exactly 0 when a row has one key), and rounding follows |dP| + |D|. */
static void ref_backward_mag(const ref_problem *p, const double *q, const double *k, const double *v,
                             const double *out, const double *dout, double *dq, double *dk, double *dv, double *mdq,
                             double *mdk, double *mdv)
{
    int64_t msk = max_sk(p);
    double *s = malloc(sizeof(double) * (size_t)msk), *dsx = malloc(sizeof(double) * (size_t)msk);
    assert_true(s && dsx);
    int64_t total_q = p->cu_q[p->nseq], total_k = p->cu_k[p->nseq];
    memset(dq, 0, sizeof(double) * (size_t)(total_q * p->hq * p->d));
    memset(dk, 0, sizeof(double) * (size_t)(total_k * p->hkv * p->d));
    memset(dv, 0, sizeof(double) * (size_t)(total_k * p->hkv * p->d));
    if (mdq) {
        memset(mdq, 0, sizeof(double) * (size_t)(total_q * p->hq * p->d));
        memset(mdk, 0, sizeof(double) * (size_t)(total_k * p->hkv * p->d));
        memset(mdv, 0, sizeof(double) * (size_t)(total_k * p->hkv * p->d));
    }
    for (int b = 0; b < p->nseq; b++) {
        int64_t sq = p->cu_q[b + 1] - p->cu_q[b], sk = p->cu_k[b + 1] - p->cu_k[b];
        for (int64_t h = 0; h < p->hq; h++) {
            int64_t g = h / (p->hq / p->hkv);
            for (int64_t i = 0; i < sq; i++) {
                ref_logits(p, q, k, b, h, i, s, dsx);
                ref_softmax(s, sk);
                int64_t row = p->cu_q[b] + i;
                const double *doi = dout + (row * p->hq + h) * p->d, *oi = out + (row * p->hq + h) * p->d;
                const double *qi = q + (row * p->hq + h) * p->d;
                double *dqi = dq + (row * p->hq + h) * p->d;
                double D = 0;
                for (int64_t c = 0; c < p->d; c++)
                    D += doi[c] * oi[c];
                for (int64_t j = 0; j < sk; j++) {
                    if (s[j] == 0)
                        continue;
                    int64_t kr = ((p->cu_k[b] + j) * p->hkv + g) * p->d;
                    double dp = 0;
                    for (int64_t c = 0; c < p->d; c++)
                        dp += doi[c] * v[kr + c];
                    double ds = s[j] * (dp - D) * dsx[j];
                    for (int64_t c = 0; c < p->d; c++) {
                        dv[kr + c] += s[j] * doi[c];
                        dk[kr + c] += ds * qi[c];
                        dqi[c] += ds * k[kr + c];
                    }
                    if (mdq) {
                        double mds = s[j] * (fabs(dp) + fabs(D)) * fabs(dsx[j]);
                        double *mdqi = mdq + (row * p->hq + h) * p->d;
                        for (int64_t c = 0; c < p->d; c++) {
                            mdv[kr + c] += s[j] * fabs(doi[c]);
                            mdk[kr + c] += mds * fabs(qi[c]);
                            mdqi[c] += mds * fabs(k[kr + c]);
                        }
                    }
                }
            }
        }
    }
    free(s);
    free(dsx);
}

static void ref_backward(const ref_problem *p, const double *q, const double *k, const double *v, const double *out,
                         const double *dout, double *dq, double *dk, double *dv)
{
    ref_backward_mag(p, q, k, v, out, dout, dq, dk, dv, NULL, NULL, NULL);
}

/* The reference backward against central differences of L = sum(out * W), on a
 * small varlen, GQA, causal + window + softcap problem (every element of q, k, v). */
static void test_reference_gradient(void **state)
{
    (void)state;
    fab_test_reseed(1);
    ref_problem p;
    memset(&p, 0, sizeof p);
    p.nseq = 2;
    int32_t cq[3] = {0, 5, 8}, ck[3] = {0, 7, 11};
    memcpy(p.cu_q, cq, sizeof cq);
    memcpy(p.cu_k, ck, sizeof ck);
    p.hq = 4, p.hkv = 2, p.d = 8, p.scale = 0.6, p.softcap = 1.5, p.left = 3, p.right = 0;
    const int64_t nq = 8 * 4 * 8, nk = 11 * 2 * 8;
    double q[256], k[176], v[176], w[256], out[256], lse[32], dq[256], dk[176], dv[176], o2[256];
    fab_test_fill_uniform(q, nq, -1.5, 1.5);
    fab_test_fill_uniform(k, nk, -1.5, 1.5);
    fab_test_fill_uniform(v, nk, -1, 1);
    fab_test_fill_uniform(w, nq, -1, 1);
    ref_forward(&p, q, k, v, out, lse);
    ref_backward(&p, q, k, v, out, w, dq, dk, dv);
    double *xs[3] = {q, k, v}, *gs[3] = {dq, dk, dv};
    const int64_t ns[3] = {nq, nk, nk};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; t++) {
        for (int64_t e = 0; e < ns[t]; e++) {
            double x0 = xs[t][e], hstep = 1e-5, lp = 0, lm = 0;
            xs[t][e] = x0 + hstep;
            ref_forward(&p, q, k, v, o2, lse);
            for (int64_t i = 0; i < nq; i++)
                lp += o2[i] * w[i];
            xs[t][e] = x0 - hstep;
            ref_forward(&p, q, k, v, o2, lse);
            for (int64_t i = 0; i < nq; i++)
                lm += o2[i] * w[i];
            xs[t][e] = x0;
            double fd = (lp - lm) / (2 * hstep);
            if (!(fabs(gs[t][e] - fd) <= 1e-7 * (1 + fabs(fd))))
                fail_msg("reference %s[%lld]: analytic %.12g, finite difference %.12g", names[t], (long long)e,
                         gs[t][e], fd);
        }
    }
    /* it is not vacuous: some gradients are clearly non-zero */
    double mx = 0;
    for (int64_t e = 0; e < nk; e++)
        mx = fmax(mx, fabs(dk[e]));
    assert_true(mx > 1e-2);
}

/* ------------------------------------------------- strided device buffers */

/* A tensor in a device buffer, possibly with gaps between rows and heads. */
typedef struct tbuf {
    int ndim;
    int64_t shape[4], stride[4];
    int64_t n_alloc;
    double *host; /* n_alloc values: what was uploaded (rounded), or downloaded */
    void *dev;
    fab_dtype dtype;
} tbuf;

static void tb_layout(tbuf *t, fab_dtype dtype, int ndim, const int64_t *shape, int padded)
{
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = ndim;
    int64_t st = 1, last = 0;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->stride[i] = st;
        st = st * shape[i] + (padded ? 8 : 0); /* gaps of 16 bytes (8 16-bit elements) */
        last += (shape[i] > 0 ? shape[i] - 1 : 0) * t->stride[i];
    }
    t->n_alloc = last + 1 + (padded ? 5 : 0);
    t->host = malloc(sizeof(double) * (size_t)t->n_alloc);
    assert_non_null(t->host);
}

static int64_t tb_numel(const tbuf *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* logical (row-major) element e -> offset in the buffer */
static int64_t tb_off(const tbuf *t, int64_t e)
{
    int64_t off = 0;
    for (int i = t->ndim - 1; i >= 0; i--) {
        off += e % t->shape[i] * t->stride[i];
        e /= t->shape[i];
    }
    return off;
}

static void tb_input(fab_context *ctx, tbuf *t, double lo, double hi)
{
    fab_test_fill_uniform(t->host, t->n_alloc, lo, hi);
    t->dev = fab_test_upload(ctx, t->dtype, t->host, t->n_alloc, t->host);
}

static void tb_output(fab_context *ctx, tbuf *t) { t->dev = fab_test_alloc_poisoned(ctx, t->dtype, t->n_alloc); }

static void tb_gather(const tbuf *t, double *logical)
{
    int64_t n = tb_numel(t);
    for (int64_t e = 0; e < n; e++)
        logical[e] = t->host[tb_off(t, e)];
}

static fab_tensor tb_tensor(const tbuf *t)
{
    fab_tensor x;
    memset(&x, 0, sizeof x);
    x.data = t->dev;
    x.dtype = t->dtype;
    x.ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++)
        x.shape[i] = t->shape[i], x.stride[i] = t->stride[i];
    return x;
}

/* Downloads an output; its logical elements into `logical`, and fails when an
 * element outside the view (a gap) was written. */
static void tb_download(fab_context *ctx, tbuf *t, double *logical, const char *what)
{
    fab_test_download(ctx, t->dtype, t->dev, t->n_alloc, t->host);
    int64_t n = tb_numel(t);
    char *inside = calloc((size_t)t->n_alloc, 1);
    assert_non_null(inside);
    for (int64_t e = 0; e < n; e++) {
        inside[tb_off(t, e)] = 1;
        logical[e] = t->host[tb_off(t, e)];
    }
    for (int64_t i = 0; i < t->n_alloc; i++)
        if (!inside[i] && !isnan(t->host[i]))
            fail_msg("%s: element %lld outside the view was written (%g)", what, (long long)i, t->host[i]);
    free(inside);
}

static void tb_free(fab_context *ctx, tbuf *t)
{
    if (t->dev)
        fab_test_free(ctx, t->dev);
    free(t->host);
    t->dev = NULL;
    t->host = NULL;
}

/* ------------------------------------------------------------------ cases */

typedef struct acase {
    const char *name;
    int64_t batch, sq, sk, hq, hkv, d; /* dense; for varlen batch = number of sequences */
    int varlen;
    int32_t lq[MAXSEQ], lk[MAXSEQ];
    int causal, window;
    int64_t wl, wr;
    float scale, softcap;
    int padded;
    double qrange; /* inputs of q, k in [-qrange, qrange]; 0: 1 */
} acase;

static fab_tolerance lse_tol(void)
{
    fab_tolerance t = {2e-5, 2e-5, 1e-5};
    return t;
}

/* Backward tolerances: f32 sums over up to 1000 rows of terms that cancel. */
static fab_tolerance grad_tol(fab_dtype dt)
{
    fab_tolerance t = fab_test_tolerance(dt);
    if (dt == FAB_DTYPE_F32)
        t.atol = 2e-5, t.rtol = 2e-5, t.rel = 1e-5;
    return t;
}

/* Runs case c on ctx and checks out, lse, dq, dk, dv against the reference. With
 * ctx2 (another context on the same device that takes the other backward path:
 * CUDA deterministic vs fast, or the CPU's other schedule; `path2` names it), the
 * backward runs again there into fresh outputs, checked against the same
 * reference; ndiff[0..2] get the number of dq, dk, dv elements whose bits differ
 * between the two runs (else they are left alone). */
static void run_case2(fab_context *ctx, const acase *c, fab_dtype dt, fab_context *ctx2, const char *path2,
                      int64_t *ndiff)
{
    char what[160];
    ref_problem p;
    memset(&p, 0, sizeof p);
    p.nseq = (int)c->batch;
    for (int b = 0; b < c->batch; b++) {
        p.cu_q[b + 1] = p.cu_q[b] + (c->varlen ? c->lq[b] : (int32_t)c->sq);
        p.cu_k[b + 1] = p.cu_k[b] + (c->varlen ? c->lk[b] : (int32_t)c->sk);
    }
    p.hq = c->hq, p.hkv = c->hkv, p.d = c->d;
    p.scale = c->scale != 0 ? (double)c->scale : 1 / sqrt((double)c->d);
    p.softcap = c->softcap;
    p.left = c->window ? c->wl : -1;
    p.right = c->causal ? 0 : c->window ? c->wr : -1;
    const int64_t tq = p.cu_q[p.nseq], tk = p.cu_k[p.nseq];
    fab_test_reseed((uint64_t)(tq * 131 + tk * 7 + c->d * 3 + c->hq + dt * 1000003));

    int64_t qshape[4], kshape[4], lshape[3];
    int nd = c->varlen ? 3 : 4, lnd = c->varlen ? 2 : 3;
    if (c->varlen) {
        int64_t a[3] = {tq, c->hq, c->d}, b[3] = {tk, c->hkv, c->d}, l[2] = {c->hq, tq};
        memcpy(qshape, a, sizeof a), memcpy(kshape, b, sizeof b), memcpy(lshape, l, sizeof l);
    } else {
        int64_t a[4] = {c->batch, c->sq, c->hq, c->d}, b[4] = {c->batch, c->sk, c->hkv, c->d};
        int64_t l[3] = {c->batch, c->hq, c->sq};
        memcpy(qshape, a, sizeof a), memcpy(kshape, b, sizeof b), memcpy(lshape, l, sizeof l);
    }
    double qr = c->qrange > 0 ? c->qrange : 1;
    tbuf q, k, v, out, lse, dout, dq, dk, dv;
    tb_layout(&q, dt, nd, qshape, c->padded), tb_input(ctx, &q, -qr, qr);
    tb_layout(&k, dt, nd, kshape, c->padded), tb_input(ctx, &k, -qr, qr);
    tb_layout(&v, dt, nd, kshape, c->padded), tb_input(ctx, &v, -1, 1);
    tb_layout(&dout, dt, nd, qshape, c->padded), tb_input(ctx, &dout, -1, 1);
    tb_layout(&out, dt, nd, qshape, c->padded), tb_output(ctx, &out);
    tb_layout(&lse, FAB_DTYPE_F32, lnd, lshape, 0), tb_output(ctx, &lse);
    tb_layout(&dq, dt, nd, qshape, c->padded), tb_output(ctx, &dq);
    tb_layout(&dk, dt, nd, kshape, c->padded), tb_output(ctx, &dk);
    tb_layout(&dv, dt, nd, kshape, c->padded), tb_output(ctx, &dv);
    /* logical values in the packed layout (a dense [b, s, h, d] is already packed) */
    int64_t nq = tq * c->hq * c->d, nk = tk * c->hkv * c->d;
    double *hq_ = malloc(sizeof(double) * (size_t)(nq + 1)), *hk = malloc(sizeof(double) * (size_t)(nk + 1));
    double *hv = malloc(sizeof(double) * (size_t)(nk + 1)), *hdo = malloc(sizeof(double) * (size_t)(nq + 1));
    double *ro = malloc(sizeof(double) * (size_t)(nq + 1)), *rl = malloc(sizeof(double) * (size_t)(c->hq * tq + 1));
    double *go = malloc(sizeof(double) * (size_t)(nq + 1)), *gl = malloc(sizeof(double) * (size_t)(c->hq * tq + 1));
    double *rdq = malloc(sizeof(double) * (size_t)(nq + 1)), *rdk = malloc(sizeof(double) * (size_t)(nk + 1));
    double *rdv = malloc(sizeof(double) * (size_t)(nk + 1)), *gdq = malloc(sizeof(double) * (size_t)(nq + 1));
    double *gdk = malloc(sizeof(double) * (size_t)(nk + 1)), *gdv = malloc(sizeof(double) * (size_t)(nk + 1));
    double *rl2 = malloc(sizeof(double) * (size_t)(c->hq * tq + 1));
    assert_true(hq_ && hk && hv && hdo && ro && rl && go && gl && rdq && rdk && rdv && gdq && gdk && gdv && rl2);
    tb_gather(&q, hq_), tb_gather(&k, hk), tb_gather(&v, hv), tb_gather(&dout, hdo);
    ref_forward(&p, hq_, hk, hv, ro, rl);
    /* the reference lse is [hq, total_q]; a dense lse is [b, hq, sq] */
    for (int b = 0; b < p.nseq; b++)
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t i = p.cu_q[b]; i < p.cu_q[b + 1]; i++)
                rl2[c->varlen ? h * tq + i : (b * c->hq + h) * c->sq + (i - p.cu_q[b])] = rl[h * tq + i];

    int32_t cuh[2 * (MAXSEQ + 1)];
    memcpy(cuh, p.cu_q, sizeof(int32_t) * (size_t)(p.nseq + 1));
    memcpy(cuh + p.nseq + 1, p.cu_k, sizeof(int32_t) * (size_t)(p.nseq + 1));
    void *cu_dev = NULL;
    fab_tensor cu_q, cu_k;
    memset(&cu_q, 0, sizeof cu_q), memset(&cu_k, 0, sizeof cu_k);
    if (c->varlen) {
        assert_int_equal(fab_alloc(ctx, sizeof cuh, &cu_dev), FAB_OK);
        assert_int_equal(fab_copy(ctx, cu_dev, cuh, sizeof cuh), FAB_OK);
        assert_int_equal(fab_synchronize(ctx), FAB_OK);
        int64_t n1 = p.nseq + 1;
        assert_int_equal(fab_tensor_make(cu_dev, FAB_DTYPE_I32, 1, &n1, &cu_q), FAB_OK);
        assert_int_equal(fab_tensor_make((int32_t *)cu_dev + n1, FAB_DTYPE_I32, 1, &n1, &cu_k), FAB_OK);
    }

    fab_attention_params f;
    memset(&f, 0, sizeof f);
    f.q = tb_tensor(&q), f.k = tb_tensor(&k), f.v = tb_tensor(&v), f.out = tb_tensor(&out), f.lse = tb_tensor(&lse);
    f.scale = c->scale, f.softcap = c->softcap, f.causal = c->causal, f.window = c->window;
    f.window_left = c->wl, f.window_right = c->wr, f.cu_seqlens_q = cu_q, f.cu_seqlens_k = cu_k;
    /* f16 varlen forwards take the trusted path (no host copy of cu_seqlens), bf16
     * ones the checked one: the CUDA kernels get both */
    if (c->varlen && dt == FAB_DTYPE_F16) {
        f.trust_cu_seqlens = 1;
        for (int64_t b = 0; b < c->batch; b++) {
            f.max_seqlen_q = c->lq[b] > f.max_seqlen_q ? c->lq[b] : f.max_seqlen_q;
            f.max_seqlen_k = c->lk[b] > f.max_seqlen_k ? c->lk[b] : f.max_seqlen_k;
        }
    }
    fab_status s = fab_attention_forward(ctx, &f);
    if (s != FAB_OK)
        fail_msg("%s %s: fab_attention_forward: %s: %s", c->name, fab_dtype_name(dt), fab_status_name(s),
                 fab_last_error());
    /* the CUDA kernels' variants, where forced */
    const char *rows = getenv("FAB_ATTN_FWD_WARP_ROWS"), *keys = getenv("FAB_ATTN_BWD_KEYS");
    char variant[48] = "", bvariant[48] = "";
    if (rows && fab_context_backend(ctx) == FAB_BACKEND_CUDA)
        snprintf(variant, sizeof variant, " (%s rows per warp)", rows);
    if (keys && fab_context_backend(ctx) == FAB_BACKEND_CUDA)
        snprintf(bvariant, sizeof bvariant, " (%s keys per dkdv block)", keys);
    snprintf(what, sizeof what, "attention_forward %s %s out%s", c->name, fab_dtype_name(dt), variant);
    tb_download(ctx, &out, go, what);
    fab_tolerance otol = fab_test_tolerance(dt);
    if (fab_context_backend(ctx) == FAB_BACKEND_CUDA && dt == FAB_DTYPE_BF16)
        otol.atol = 2.5e-3; /* the GPU rounds P to bf16 for P.V (as FlashAttention): |err| <= 2^-9 max|v| more */
    fab_test_check_close(what, go, ro, nq, otol);
    snprintf(what, sizeof what, "attention_forward %s %s lse%s", c->name, fab_dtype_name(dt), variant);
    tb_download(ctx, &lse, gl, what);
    fab_test_check_close(what, gl, rl2, c->hq * tq, lse_tol());

    /* backward from the kernel's own out and lse */
    double *mdq = malloc(sizeof(double) * (size_t)(nq + 1)), *mdk = malloc(sizeof(double) * (size_t)(nk + 1));
    double *mdv = malloc(sizeof(double) * (size_t)(nk + 1));
    assert_true(mdq && mdk && mdv);
    ref_backward_mag(&p, hq_, hk, hv, go, hdo, rdq, rdk, rdv, mdq, mdk, mdv);

    fab_attention_backward_params bp;
    memset(&bp, 0, sizeof bp);
    bp.q = f.q, bp.k = f.k, bp.v = f.v, bp.out = f.out, bp.lse = f.lse, bp.dout = tb_tensor(&dout);
    bp.dq = tb_tensor(&dq), bp.dk = tb_tensor(&dk), bp.dv = tb_tensor(&dv);
    bp.scale = f.scale, bp.softcap = f.softcap, bp.causal = f.causal, bp.window = f.window;
    bp.window_left = f.window_left, bp.window_right = f.window_right;
    bp.cu_seqlens_q = cu_q, bp.cu_seqlens_k = cu_k;
    s = fab_attention_backward(ctx, &bp);
    if (s != FAB_OK)
        fail_msg("%s %s: fab_attention_backward: %s: %s", c->name, fab_dtype_name(dt), fab_status_name(s),
                 fab_last_error());
    const char *gn[3] = {"dq", "dk", "dv"};
    tbuf *gb[3] = {&dq, &dk, &dv};
    double *gg[3] = {gdq, gdk, gdv}, *rg[3] = {rdq, rdk, rdv}, *mg[3] = {mdq, mdk, mdv};
    int64_t gnum[3] = {nq, nk, nk};
    for (int t = 0; t < 3; t++) {
        snprintf(what, sizeof what, "attention_backward %s %s %s%s", c->name, fab_dtype_name(dt), gn[t], bvariant);
        tb_download(ctx, gb[t], gg[t], what);
        fab_tolerance gtol = grad_tol(dt);
        if (fab_context_backend(ctx) == FAB_BACKEND_CUDA && dt == FAB_DTYPE_BF16) {
            /* the GPU rounds P and dS to bf16 for the products that consume them (as
             * FlashAttention): each sum's error grows by up to 2^-9 of its terms' size */
            double mx = 0;
            for (int64_t i = 0; i < gnum[t]; i++)
                mx = fmax(mx, fabs(rg[t][i]));
            gtol.atol = fmax(gtol.atol, mx / 256);
        }
        fab_test_check_close_mag(what, gg[t], rg[t], mg[t], gnum[t], gtol);
    }
    if (ctx2) {
        double *g2 = malloc(sizeof(double) * (size_t)(nq > nk ? nq + 1 : nk + 1));
        assert_non_null(g2);
        for (int t = 0; t < 3; t++) { /* fresh poisoned outputs: nothing of the first run survives */
            fab_test_free(ctx, gb[t]->dev);
            tb_output(ctx, gb[t]);
        }
        bp.dq = tb_tensor(&dq), bp.dk = tb_tensor(&dk), bp.dv = tb_tensor(&dv);
        assert_int_equal(fab_synchronize(ctx), FAB_OK);
        s = fab_attention_backward(ctx2, &bp);
        if (s != FAB_OK)
            fail_msg("%s %s: fab_attention_backward (%s): %s: %s", c->name, fab_dtype_name(dt), path2,
                     fab_status_name(s), fab_last_error());
        assert_int_equal(fab_synchronize(ctx2), FAB_OK);
        for (int t = 0; t < 3; t++) {
            snprintf(what, sizeof what, "attention_backward %s %s %s (%s)%s", c->name, fab_dtype_name(dt), gn[t],
                     path2, bvariant);
            tb_download(ctx, gb[t], g2, what);
            fab_tolerance gtol = grad_tol(dt);
            if (dt == FAB_DTYPE_BF16) { /* as above */
                double mx = 0;
                for (int64_t i = 0; i < gnum[t]; i++)
                    mx = fmax(mx, fabs(rg[t][i]));
                gtol.atol = fmax(gtol.atol, mx / 256);
            }
            fab_test_check_close_mag(what, g2, rg[t], mg[t], gnum[t], gtol);
            for (int64_t i = 0; i < gnum[t]; i++)
                ndiff[t] += memcmp(&g2[i], &gg[t][i], sizeof(double)) != 0;
        }
        free(g2);
    }

    if (cu_dev)
        fab_test_free(ctx, cu_dev);
    tbuf *all[9] = {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv};
    for (int i = 0; i < 9; i++)
        tb_free(ctx, all[i]);
    double *hs[18] = {hq_, hk, hv, hdo, ro, rl, go, gl, rdq, rdk, rdv, gdq, gdk, gdv, rl2, mdq, mdk, mdv};
    for (int i = 0; i < 18; i++)
        free(hs[i]);
}

static void run_case(fab_context *ctx, const acase *c, fab_dtype dt) { run_case2(ctx, c, dt, NULL, NULL, NULL); }

/* name, batch, sq, sk, hq, hkv, d, varlen, lq, lk, causal, window, wl, wr, scale, softcap, padded, qrange */
static const acase cases[] = {
    {"basic", 2, 128, 128, 2, 2, 64, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    {"causal", 2, 128, 128, 2, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"causal sq<sk", 1, 17, 128, 2, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"causal+window sq<sk, unseen keys", 1, 17, 200, 2, 1, 64, 0, {0}, {0}, 1, 1, 10, -1, 0, 0, 0, 0},
    {"sq>sk", 2, 130, 17, 2, 2, 64, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    {"window sq>sk", 1, 128, 17, 2, 2, 32, 0, {0}, {0}, 0, 1, 5, 120, 0, 0, 0, 0},
    {"window both sides", 1, 200, 200, 2, 2, 64, 0, {0}, {0}, 0, 1, 7, 3, 0, 0, 0, 0},
    {"causal+window left", 2, 150, 150, 2, 2, 64, 0, {0}, {0}, 1, 1, 31, -1, 0, 0, 0, 0},
    {"softcap+scale", 1, 100, 90, 2, 2, 64, 0, {0}, {0}, 0, 0, 0, 0, 0.5f, 2.0f, 0, 2},
    {"window+softcap", 1, 129, 129, 2, 2, 64, 0, {0}, {0}, 0, 1, 20, 20, 0, 10.0f, 0, 2},
    {"GQA causal", 2, 70, 70, 6, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"MQA", 1, 65, 80, 4, 1, 64, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    {"varlen causal GQA", 5, 0, 0, 4, 2, 64, 1, {17, 1, 64, 0, 100}, {17, 30, 64, 5, 130}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"varlen window softcap", 3, 0, 0, 2, 1, 128, 1, {40, 7, 66}, {45, 90, 66}, 0, 1, 16, 4, 0, 5.0f, 0, 0},
    {"head_dim 32", 1, 65, 70, 2, 2, 32, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"head_dim 96", 1, 65, 70, 2, 2, 96, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    /* Hopper runs 96 as 128 with zeros past 96: strided, so that reading or writing a
     * column past 96 meets the gaps' and the next head's values */
    {"head_dim 96 strided GQA causal", 1, 150, 200, 4, 2, 96, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 1, 0},
    {"head_dim 96 strided varlen window softcap", 2, 0, 0, 2, 1, 96, 1, {70, 33}, {100, 140}, 0, 1, 30, 10, 0,
     4.0f, 1, 0},
    {"head_dim 128", 1, 65, 70, 2, 2, 128, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"head_dim 256", 1, 65, 70, 2, 1, 256, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    {"head_dim 256 varlen causal window softcap", 2, 0, 0, 2, 1, 256, 1, {70, 33}, {100, 33}, 1, 1, 40, -1, 0, 3.0f, 0, 0},
    {"head_dim 256 sq>sk window", 1, 97, 40, 2, 2, 256, 0, {0}, {0}, 0, 1, 20, 60, 0, 0, 0, 0},
    {"head_dim 17", 1, 33, 20, 3, 1, 17, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    {"seqlen 1", 3, 1, 1, 2, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"decode 1x1000", 1, 1, 1000, 4, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"strided GQA causal", 2, 77, 77, 4, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 1, 0},
    {"strided varlen", 2, 0, 0, 2, 2, 64, 1, {30, 50}, {45, 50}, 1, 0, 0, 0, 0, 0, 1, 0},
    {"empty queries (sq=0)", 2, 0, 40, 2, 2, 64, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    /* the edges of the CUDA kernels' unmasked (interior) tiles, one key off each:
     * keys end one short of a 64- (and 32-) key tile (the forward's softmax would
     * take a zero-filled key); causal with the diagonal of the 4th warp's first
     * row one key short of a tile's end (offset 14, all 64 rows real, so the dq
     * kernel's last warp tests it too); a left window whose first allowed key for
     * row 15 is one past a tile's start */
    {"sk 127: one short of a tile", 1, 33, 127, 2, 2, 64, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    {"head_dim 256 sk 127", 1, 33, 127, 2, 1, 256, 0, {0}, {0}, 0, 0, 0, 0, 0, 0, 0, 0},
    {"causal offset 14", 1, 64, 78, 2, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"window left 14", 1, 64, 64, 2, 2, 64, 0, {0}, {0}, 0, 1, 14, -1, 0, 0, 0, 0},
    /* the same edges for the forward's 128-row blocks (32 rows per warp, 64- or
     * 32-key tiles): causal with the 4th warp's first row (96) one key short of a
     * tile's end (offset 30, at head_dim 64 and 128); a left window whose first
     * allowed key for the block's last row (127) is one past a tile's start */
    {"causal offset 30", 1, 128, 158, 2, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"head_dim 128 causal offset 30", 1, 128, 158, 2, 1, 128, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0},
    {"window left 62", 1, 128, 128, 2, 2, 64, 0, {0}, {0}, 0, 1, 62, -1, 0, 0, 0, 0},
    /* window sides far past every sequence (row + offset + side would overflow) */
    {"window sides INT64_MAX", 1, 40, 50, 2, 2, 64, 0, {0}, {0}, 0, 1, INT64_MAX, INT64_MAX, 0, 0, 0, 0},
};
static const acase long_case = {"long 1000 causal GQA", 1, 1000, 1000, 4, 2, 64, 0, {0}, {0}, 1, 0, 0, 0, 0, 0, 0, 0};
static const acase emu_long_case = {"longer 384 causal GQA varlen", 2, 0, 0, 4, 2, 128, 1, {384, 200}, {384, 260}, 1, 1, 150, -1, 0, 0, 0, 0};
static const acase long_window = {"long 1000 window", 1, 1000, 1000, 2, 2, 128, 0, {0}, {0}, 0, 1, 100, 100, 0, 0, 0, 0};

/* What the CUDA kernels take, forward and backward (test_backend_coverage checks
 * the rest is refused). */
static int cuda_runs(const acase *c, fab_dtype dt)
{
    return dt != FAB_DTYPE_F32 && (c->d == 32 || c->d == 64 || c->d == 96 || c->d == 128 || c->d == 256);
}

static void skip_on_cuda(fab_context *ctx, const char *why)
{
    if (fab_context_backend(ctx) == FAB_BACKEND_CUDA) {
        fab_context_destroy(ctx);
        print_message("SKIP: %s\n", why);
        skip();
    }
}

/* Every case, and every backward twice, on the two paths of the backend:
 * CUDA: the fast path (the default context, deterministic = 0: dq by atomics)
 *       and the deterministic one (a second context), whose dk and dv must be
 *       bitwise equal (both paths run the same dkdv kernel: the sm80 one, or on
 *       sm_90 at head dims 64, 96 and 128 the Hopper one);
 * CPU:  the single-pass schedule (1 thread) and the two-pass one (16 threads,
 *       more than any case's batch x kv heads), which must agree bit for bit. */
static void test_cases_dtype(fab_dtype dt)
{
    fab_context *ctx = fab_test_context();
    int cuda = fab_context_backend(ctx) == FAB_BACKEND_CUDA;
    if (cuda && dt == FAB_DTYPE_F32)
        skip_on_cuda(ctx, "the CUDA attention kernel takes bf16 and f16 only (test_backend_coverage checks f32 is refused)");
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    const char *path2;
    if (cuda) {
        cfg.deterministic = 1;
        path2 = "deterministic path";
    } else {
        fab_context_destroy(ctx);
        cfg.num_threads = 1;
        ctx = fab_test_context_with(&cfg);
        cfg.num_threads = 16;
        path2 = "CPU two-pass schedule";
    }
    fab_context *ctx2 = fab_test_context_with(&cfg);
    int64_t ndiff[3] = {0, 0, 0};
    /* CUDA: every case with each variant of the forward (16 and 32 query rows per
     * warp) and of the backward's dkdv kernel (64 and 128 keys per block): left to
     * themselves they pick by grid size, and these grids are small */
    const char *warp_rows[2] = {"16", "32"}, *dkdv_keys[2] = {"64", "128"};
    for (int pass = 0; pass < (cuda ? 2 : 1); pass++) {
        if (cuda) {
            setenv("FAB_ATTN_FWD_WARP_ROWS", warp_rows[pass], 1);
            setenv("FAB_ATTN_BWD_KEYS", dkdv_keys[pass], 1);
        }
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            if (!cuda || cuda_runs(&cases[i], dt))
                run_case2(ctx, &cases[i], dt, ctx2, path2, ndiff);
    }
    unsetenv("FAB_ATTN_FWD_WARP_ROWS");
    unsetenv("FAB_ATTN_BWD_KEYS");
    if (cuda && ndiff[1] + ndiff[2] != 0) /* the same dkdv arithmetic on both paths */
        fail_msg("attention %s: dk differs in %lld elements, dv in %lld, between the fast and the deterministic "
                 "path (they must be bitwise equal)",
                 fab_dtype_name(dt), (long long)ndiff[1], (long long)ndiff[2]);
    if (cuda)
        print_message("attention %s: dq differs in %lld elements between the fast and the deterministic path\n",
                      fab_dtype_name(dt), (long long)ndiff[0]);
    else if (ndiff[0] + ndiff[1] + ndiff[2] != 0)
        fail_msg("attention %s: the CPU's single-pass and two-pass backward differ in %lld dq, %lld dk, %lld dv "
                 "elements (they must be bitwise equal)",
                 fab_dtype_name(dt), (long long)ndiff[0], (long long)ndiff[1], (long long)ndiff[2]);
    fab_context_destroy(ctx2);
    fab_context_destroy(ctx);
}

static void test_cases_bf16(void **state) { (void)state; test_cases_dtype(FAB_DTYPE_BF16); }
/* On an (emulated) H100 the cases above run the Hopper forward and backward where
 * they apply (head dims 64, 96, 128, and 256 forward); these the sm80 kernels, as
 * other GPUs do. */
static void test_cases_sm80(void **state)
{
    (void)state;
    setenv("FAB_ATTN_SM90", "0", 1);
    test_cases_dtype(FAB_DTYPE_BF16);
    unsetenv("FAB_ATTN_SM90");
}
static void test_cases_f16(void **state) { (void)state; test_cases_dtype(FAB_DTYPE_F16); }
static void test_cases_f32(void **state) { (void)state; test_cases_dtype(FAB_DTYPE_F32); }

static void test_long(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    if (fab_context_backend(ctx) == FAB_BACKEND_CUDA) { /* the emulator is slow: one longer case */
        run_case(ctx, &emu_long_case, FAB_DTYPE_BF16);
    } else {
        run_case(ctx, &long_case, FAB_DTYPE_BF16);
        run_case(ctx, &long_window, FAB_DTYPE_F32);
    }
    fab_context_destroy(ctx);
}

/* ------------------------------------------------------------ determinism */

/* Forward parameters over dense [b, s, h, d] tensors: q and out shaped qs, k and
 * v shaped ks; everything else zero (no mask, default scale, no lse). */
static fab_attention_params dense_forward(fab_dtype dt, const int64_t *qs, const int64_t *ks, void *q, void *k,
                                          void *v, void *out)
{
    fab_attention_params f;
    memset(&f, 0, sizeof f);
    fab_tensor_make(q, dt, 4, qs, &f.q);
    fab_tensor_make(k, dt, 4, ks, &f.k);
    fab_tensor_make(v, dt, 4, ks, &f.v);
    fab_tensor_make(out, dt, 4, qs, &f.out);
    return f;
}

/* Runs forward + backward of a GQA causal problem of s rows and head dim d (f32
 * on the CPU, so any change in a summation order shows), with a left window where
 * left >= 0, and returns the bytes of out, lse, dq, dk, dv. */
/* test_cpu_amx: FAB_ATTN_CPU_AMX for det_run's backward only (NULL: as it is) */
static const char *det_backward_amx;

static void det_run(fab_context *ctx, fab_dtype dt, int64_t s, int64_t d, int64_t left, unsigned char *bytes,
                    size_t *nbytes)
{
    const int64_t b = 2, hq = 4, hkv = 2;
    int64_t qs[4] = {b, s, hq, d}, ks[4] = {b, s, hkv, d}, ls[3] = {b, hq, s};
    int64_t nq = b * s * hq * d, nk = b * s * hkv * d;
    double *x = malloc(sizeof(double) * (size_t)(nq + 32));
    assert_non_null(x);
    fab_test_reseed(77);
    fab_test_fill_uniform(x, nq + 32, -1, 1);
    void *q = fab_test_upload(ctx, dt, x, nq, NULL);
    void *dout = fab_test_upload(ctx, dt, x + 5, nq, NULL); /* shifted: another tensor */
    void *k = fab_test_upload(ctx, dt, x + 11, nk, NULL);
    void *v = fab_test_upload(ctx, dt, x + 17, nk, NULL);
    void *out = fab_test_alloc_poisoned(ctx, dt, nq), *lse = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, b * hq * s);
    void *dq = fab_test_alloc_poisoned(ctx, dt, nq), *dk = fab_test_alloc_poisoned(ctx, dt, nk);
    void *dv = fab_test_alloc_poisoned(ctx, dt, nk);
    fab_attention_params f = dense_forward(dt, qs, ks, q, k, v, out);
    fab_tensor_make(lse, FAB_DTYPE_F32, 3, ls, &f.lse);
    f.causal = 1;
    f.softcap = 3;
    if (left >= 0)
        f.window = 1, f.window_left = left, f.window_right = -1;
    assert_int_equal(fab_attention_forward(ctx, &f), FAB_OK);
    fab_attention_backward_params p;
    memset(&p, 0, sizeof p);
    p.q = f.q, p.k = f.k, p.v = f.v, p.out = f.out, p.lse = f.lse, p.causal = 1, p.softcap = 3;
    p.window = f.window, p.window_left = f.window_left, p.window_right = f.window_right;
    fab_tensor_make(dout, dt, 4, qs, &p.dout);
    fab_tensor_make(dq, dt, 4, qs, &p.dq);
    fab_tensor_make(dk, dt, 4, ks, &p.dk);
    fab_tensor_make(dv, dt, 4, ks, &p.dv);
    if (det_backward_amx)
        setenv("FAB_ATTN_CPU_AMX", det_backward_amx, 1);
    assert_int_equal(fab_attention_backward(ctx, &p), FAB_OK);
    if (det_backward_amx)
        unsetenv("FAB_ATTN_CPU_AMX");
    size_t off = 0;
    void *bufs[5] = {out, lse, dq, dk, dv};
    int64_t ns[5] = {nq, b * hq * s, nq, nk, nk};
    for (int i = 0; i < 5; i++) {
        size_t es = i == 1 ? 4 : fab_dtype_size(dt);
        fab_test_download_bytes(ctx, bufs[i], (size_t)ns[i] * es, bytes + off);
        off += (size_t)ns[i] * es;
        fab_test_free(ctx, bufs[i]);
    }
    *nbytes = off;
    fab_test_free(ctx, q), fab_test_free(ctx, k), fab_test_free(ctx, v), fab_test_free(ctx, dout);
    free(x);
}

static void test_deterministic(void **state)
{
    (void)state;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deterministic = 1;
    /* head dim 64, and 256 (on CUDA its own tile shapes and split of D) */
    const int64_t shapes[2][2] = {{150, 64}, {99, 256}};
    for (int i = 0; i < 2; i++) {
        const int64_t sl = shapes[i][0], d = shapes[i][1];
        cfg.num_threads = 2;
        fab_context *ctx = fab_test_context_with(&cfg);
        const fab_dtype dt = fab_context_backend(ctx) == FAB_BACKEND_CUDA ? FAB_DTYPE_BF16 : FAB_DTYPE_F32;
        const size_t es = fab_dtype_size(dt);
        size_t cap = (size_t)(2 * sl * 4 * d * 2 + 2 * sl * 2 * d * 2) * es + 2 * 4 * (size_t)sl * 4, n1, n2, n3, n4;
        unsigned char *r1 = malloc(cap), *r2 = malloc(cap), *r3 = malloc(cap), *r4 = malloc(cap);
        assert_true(r1 && r2 && r3 && r4);
        det_run(ctx, dt, sl, d, -1, r1, &n1);
        det_run(ctx, dt, sl, d, -1, r2, &n2);
        fab_context_destroy(ctx);
        cfg.num_threads = 1;
        ctx = fab_test_context_with(&cfg);
        det_run(ctx, dt, sl, d, -1, r3, &n3);
        fab_context_destroy(ctx);
        /* 5 threads for 4 (batch, kv head) tasks: the CPU backward takes its two-pass
         * schedule, where 1 and 2 threads take the single pass */
        cfg.num_threads = 5;
        ctx = fab_test_context_with(&cfg);
        det_run(ctx, dt, sl, d, -1, r4, &n4);
        fab_context_destroy(ctx);
        assert_int_equal(n1, cap);
        assert_true(n1 == n2 && n1 == n3 && n1 == n4);
        if (memcmp(r1, r2, n1) != 0)
            fail_msg("attention: two deterministic runs differ (head_dim %lld)", (long long)d);
        if (memcmp(r1, r3, n1) != 0)
            fail_msg("attention: 1 and 2 threads give different bits (head_dim %lld)", (long long)d);
        if (memcmp(r1, r4, n1) != 0)
            fail_msg("attention: 2 and 5 threads give different bits (head_dim %lld)", (long long)d);
        free(r1), free(r2), free(r3), free(r4);
    }
}

/* A varlen forward (CPU) of 3 sequences of different lengths, sq != sk in each,
 * hq = hkv = 2, d = 64, f32, with a window of both sides where window is set:
 * the bytes of out and lse into bytes (nbytes). */
static void varlen_forward(fab_context *ctx, int window, unsigned char *bytes, size_t *nbytes)
{
    static const int32_t cq[4] = {0, 300, 370, 570}, ck[4] = {0, 250, 380, 580};
    const int64_t h = 2, d = 64, tq = cq[3], tk = ck[3];
    int64_t qs[3] = {tq, h, d}, ks[3] = {tk, h, d}, ls[2] = {h, tq}, cs[1] = {4};
    const int64_t nx = (tq > tk ? tq : tk) * h * d + 32; /* k and v read from offsets 7 and 13 */
    double *x = malloc(sizeof(double) * (size_t)nx);
    assert_non_null(x);
    fab_test_reseed(78);
    fab_test_fill_uniform(x, nx, -2, 2);
    void *q = fab_test_upload(ctx, FAB_DTYPE_F32, x, tq * h * d, NULL);
    void *k = fab_test_upload(ctx, FAB_DTYPE_F32, x + 7, tk * h * d, NULL);
    void *v = fab_test_upload(ctx, FAB_DTYPE_F32, x + 13, tk * h * d, NULL);
    float *out = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, tq * h * d);
    float *lse = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, h * tq);
    fab_attention_params f;
    memset(&f, 0, sizeof f);
    fab_tensor_make(q, FAB_DTYPE_F32, 3, qs, &f.q);
    fab_tensor_make(k, FAB_DTYPE_F32, 3, ks, &f.k);
    fab_tensor_make(v, FAB_DTYPE_F32, 3, ks, &f.v);
    fab_tensor_make(out, FAB_DTYPE_F32, 3, qs, &f.out);
    fab_tensor_make(lse, FAB_DTYPE_F32, 2, ls, &f.lse);
    fab_tensor_make((void *)cq, FAB_DTYPE_I32, 1, cs, &f.cu_seqlens_q);
    fab_tensor_make((void *)ck, FAB_DTYPE_I32, 1, cs, &f.cu_seqlens_k);
    if (window)
        f.window = 1, f.window_left = 77, f.window_right = 100;
    assert_int_equal(fab_attention_forward(ctx, &f), FAB_OK);
    for (int64_t e = 0; e < tq * h * d; e++) /* inputs in [-2, 2]: every output finite */
        assert_true(isfinite(out[e]));
    memcpy(bytes, out, sizeof(float) * (size_t)(tq * h * d));
    memcpy(bytes + sizeof(float) * (size_t)(tq * h * d), lse, sizeof(float) * (size_t)(h * tq));
    *nbytes = sizeof(float) * (size_t)(tq * h * d + h * tq);
    fab_test_free(ctx, q), fab_test_free(ctx, k), fab_test_free(ctx, v), fab_test_free(ctx, out);
    fab_test_free(ctx, lse);
    free(x);
}

/* One CPU forward (and what else the run does) into bytes, for kv_cache_ways */
typedef void (*kv_run_fn)(fab_context *ctx, const void *arg, unsigned char *bytes, size_t *nbytes);

/* det_run's problem: dtype, rows, head dim, left window (-1: none) */
typedef struct kv_det_case {
    int64_t s, d, left;
    fab_dtype dt;
} kv_det_case;

static void kv_det_run(fab_context *ctx, const void *arg, unsigned char *bytes, size_t *nbytes)
{
    const kv_det_case *c = arg;
    det_run(ctx, c->dt, c->s, c->d, c->left, bytes, nbytes);
}

static void kv_varlen_run(fab_context *ctx, const void *arg, unsigned char *bytes, size_t *nbytes)
{
    varlen_forward(ctx, *(const int *)arg, bytes, nbytes);
}

/* Runs `run` with the key/value cache (ctx), with FAB_ATTN_CPU_KV_CACHE=0 and on
 * `small` (a workspace too small for the cache), each giving cap bytes; returns
 * the way whose bytes differ from the first's, NULL when all agree. */
static const char *kv_cache_ways(fab_context *ctx, fab_context *small, kv_run_fn run, const void *arg, size_t cap)
{
    size_t n1, n2, n3;
    unsigned char *r1 = malloc(cap), *r2 = malloc(cap), *r3 = malloc(cap);
    assert_true(r1 && r2 && r3);
    run(ctx, arg, r1, &n1);
    setenv("FAB_ATTN_CPU_KV_CACHE", "0", 1);
    run(ctx, arg, r2, &n2);
    unsetenv("FAB_ATTN_CPU_KV_CACHE");
    run(small, arg, r3, &n3);
    assert_int_equal(n1, cap);
    assert_int_equal(n2, cap);
    assert_int_equal(n3, cap);
    const char *differs = memcmp(r1, r2, cap) != 0   ? "FAB_ATTN_CPU_KV_CACHE=0"
                          : memcmp(r1, r3, cap) != 0 ? "a 256 KiB workspace"
                                                     : NULL;
    free(r1), free(r2), free(r3);
    return differs;
}

/* The CPU forward's key/value cache (attention_cpu.c, kv_cache_floats): each
 * thread converts a key tile once and its next query tiles of the head group read
 * it. With it and without it (FAB_ATTN_CPU_KV_CACHE=0, or a workspace of 256 KiB,
 * too small for it, where the scratch is allocated per call for d = 128) the
 * results must be the same bits: f32 and bf16, GQA, causal with softcap, a left
 * window whose first key is no multiple of the 64-key tile (a tile the cache holds
 * whole, of which such a query tile sees only the end), and a varlen batch whose
 * sequences (sq != sk) pass through one thread's cache in turn; 2 threads, so that
 * each takes query tiles of several heads in turn. The backward runs too
 * (det_run), from the same kept scratch. */
static void test_cpu_kv_cache(void **state)
{
    (void)state;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.num_threads = 2;
    fab_context *ctx = fab_test_context_with(&cfg);
    if (fab_context_backend(ctx) != FAB_BACKEND_CPU) {
        fab_context_destroy(ctx);
        print_message("SKIP: the key/value cache is the CPU forward's\n");
        skip();
    }
    unsetenv("FAB_ATTN_CPU_KV_CACHE"); /* the first run of each pair has the cache */
    cfg.workspace_bytes = 256 << 10;
    fab_context *small = fab_test_context_with(&cfg);
    static const kv_det_case shapes[] = {{300, 64, -1, FAB_DTYPE_F32},
                                         {300, 64, 90, FAB_DTYPE_F32},
                                         {270, 128, 200, FAB_DTYPE_BF16},
                                         {200, 48, -1, FAB_DTYPE_BF16}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int64_t sl = shapes[i].s, d = shapes[i].d;
        const size_t es = fab_dtype_size(shapes[i].dt);
        const size_t cap = (size_t)(2 * sl * 4 * d * 2 + 2 * sl * 2 * d * 2) * es + 2 * 4 * (size_t)sl * 4;
        const char *differs = kv_cache_ways(ctx, small, kv_det_run, &shapes[i], cap);
        if (differs)
            fail_msg("attention: the CPU forward with and without its key/value cache differs (s %lld, head_dim %lld, "
                     "left %lld; %s)",
                     (long long)sl, (long long)d, (long long)shapes[i].left, differs);
    }
    for (int window = 0; window < 2; window++) {
        const char *differs =
            kv_cache_ways(ctx, small, kv_varlen_run, &window, sizeof(float) * (570 * 2 * 64 + 2 * 570));
        if (differs)
            fail_msg("attention: the CPU forward of a varlen batch%s with and without its key/value cache differs "
                     "(%s)",
                     window ? " with a window" : "", differs);
    }
    fab_context_destroy(small);
    fab_context_destroy(ctx);
}

/* llm.c's layout: q, k and v are strided views of one [B, T, 3C] buffer, and so
 * are dq, dk and dv of its gradient. The views interleave (their spans overlap,
 * their elements do not): the backward must take them, write only its own
 * columns, and give bit for bit what separate buffers get (deterministic
 * context), as must torch's [b, h, s, d] layout seen as [b, s, h, d]. Views whose
 * elements do overlap are still refused, nothing written. */
static void test_packed_qkv(void **state)
{
    (void)state;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deterministic = 1;
    fab_context *ctx = fab_test_context_with(&cfg);
    const fab_dtype dt = FAB_DTYPE_BF16;
    const int64_t B = 2, T = 37, NH = 2, hs = 64, C = NH * hs, n3 = B * T * 3 * C, n1 = B * T * C;
    double *h_inp = malloc(sizeof(double) * (size_t)n3), *h_dout = malloc(sizeof(double) * (size_t)n1);
    double *h_dinp = malloc(sizeof(double) * (size_t)n3), *h_sep = malloc(sizeof(double) * (size_t)n1);
    assert_non_null(h_inp);
    assert_non_null(h_dout);
    assert_non_null(h_dinp);
    assert_non_null(h_sep);
    fab_test_fill_uniform(h_inp, n3, -1, 1);
    fab_test_fill_uniform(h_dout, n1, -1, 1);
    char *inp = fab_test_upload(ctx, dt, h_inp, n3, NULL);
    void *dout = fab_test_upload(ctx, dt, h_dout, n1, NULL);
    void *out = fab_test_alloc_poisoned(ctx, dt, n1), *lse = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, B * NH * T);
    char *dinp = fab_test_alloc_poisoned(ctx, dt, n3);
    void *sep[3];
    for (int i = 0; i < 3; i++)
        sep[i] = fab_test_alloc_poisoned(ctx, dt, n1);
    const size_t es = fab_dtype_size(dt);
    int64_t shape[4] = {B, T, NH, hs}, packed[4] = {T * 3 * C, 3 * C, hs, 1};
    fab_tensor view[3], grad[3], plain[3], o, l, g;
    for (int i = 0; i < 3; i++) {
        view[i] = grad[i] = (fab_tensor){0};
        assert_int_equal(fab_tensor_make(inp + (size_t)(i * C) * es, dt, 4, shape, &view[i]), FAB_OK);
        assert_int_equal(fab_tensor_make(dinp + (size_t)(i * C) * es, dt, 4, shape, &grad[i]), FAB_OK);
        memcpy(view[i].stride, packed, sizeof packed);
        memcpy(grad[i].stride, packed, sizeof packed);
        assert_int_equal(fab_tensor_make(sep[i], dt, 4, shape, &plain[i]), FAB_OK);
    }
    int64_t lshape[3] = {B, NH, T};
    assert_int_equal(fab_tensor_make(out, dt, 4, shape, &o), FAB_OK);
    assert_int_equal(fab_tensor_make(dout, dt, 4, shape, &g), FAB_OK);
    assert_int_equal(fab_tensor_make(lse, FAB_DTYPE_F32, 3, lshape, &l), FAB_OK);

    fab_attention_params fp;
    memset(&fp, 0, sizeof fp);
    fp.q = view[0], fp.k = view[1], fp.v = view[2], fp.out = o, fp.lse = l, fp.causal = 1;
    if (fab_attention_forward(ctx, &fp) != FAB_OK)
        fail_msg("attention forward on llm.c's packed qkv: %s", fab_last_error());
    fab_attention_backward_params bp;
    memset(&bp, 0, sizeof bp);
    bp.q = view[0], bp.k = view[1], bp.v = view[2], bp.out = o, bp.dout = g, bp.lse = l, bp.causal = 1;
    bp.dq = grad[0], bp.dk = grad[1], bp.dv = grad[2];

    /* dk shifted by half a head: its elements meet dv's; refused, dinp untouched */
    bp.dk.data = dinp + (size_t)(C + hs / 2) * es;
    fab_test_expect_error(fab_attention_backward(ctx, &bp), FAB_ERR_INVALID_ARGUMENT, "dk overlaps dv");
    fab_test_download(ctx, dt, dinp, n3, h_dinp);
    for (int64_t i = 0; i < n3; i++)
        if (!isnan(h_dinp[i]))
            fail_msg("a refused backward wrote dinp[%lld]", (long long)i);

    bp.dk = grad[1];
    if (fab_attention_backward(ctx, &bp) != FAB_OK)
        fail_msg("attention backward into llm.c's packed dinp: %s", fab_last_error());
    fab_test_download(ctx, dt, dinp, n3, h_dinp);
    /* and into torch's layout: [B, NH, T, hs] buffers seen as [B, T, NH, hs] */
    void *tr[3];
    int64_t torch_strides[4] = {NH * T * hs, hs, T * hs, 1};
    for (int i = 0; i < 3; i++) {
        tr[i] = fab_test_alloc_poisoned(ctx, dt, n1);
        fab_tensor *t = i == 0 ? &bp.dq : i == 1 ? &bp.dk : &bp.dv;
        assert_int_equal(fab_tensor_make(tr[i], dt, 4, shape, t), FAB_OK);
        memcpy(t->stride, torch_strides, sizeof torch_strides);
    }
    if (fab_attention_backward(ctx, &bp) != FAB_OK)
        fail_msg("attention backward into torch's [b, h, s, d] layout: %s", fab_last_error());
    bp.dq = plain[0], bp.dk = plain[1], bp.dv = plain[2];
    if (fab_attention_backward(ctx, &bp) != FAB_OK)
        fail_msg("attention backward into separate buffers: %s", fab_last_error());
    double *h_tr = malloc(sizeof(double) * (size_t)n1);
    assert_non_null(h_tr);
    for (int i = 0; i < 3; i++) {
        fab_test_download(ctx, dt, sep[i], n1, h_sep);
        fab_test_download(ctx, dt, tr[i], n1, h_tr);
        for (int64_t r = 0; r < B * T; r++)
            for (int64_t c = 0; c < C; c++) {
                int64_t bi = r / T, ti = r % T, hi = c / hs, di = c % hs;
                double packed_v = h_dinp[r * 3 * C + i * C + c], sep_v = h_sep[r * C + c];
                double torch_v = h_tr[((bi * NH + hi) * T + ti) * hs + di];
                if (!(packed_v == sep_v) || !(torch_v == sep_v)) /* NaN: not written */
                    fail_msg("d%c at row %lld, column %lld: %g in the packed dinp, %g in torch's layout, %g in a "
                             "separate buffer",
                             "qkv"[i], (long long)r, (long long)c, packed_v, torch_v, sep_v);
            }
    }
    free(h_tr);
    for (int i = 0; i < 3; i++) {
        fab_test_free(ctx, sep[i]);
        fab_test_free(ctx, tr[i]);
    }
    fab_test_free(ctx, dinp);
    fab_test_free(ctx, lse);
    fab_test_free(ctx, out);
    fab_test_free(ctx, dout);
    fab_test_free(ctx, inp);
    free(h_inp);
    free(h_dout);
    free(h_dinp);
    free(h_sep);
    fab_context_destroy(ctx);
}

/* A random strided view of [b, s, h, d] in `big`: dims nested in a random order
 * (so its own elements are distinct), gaps, an offset. With `slot` >= 0 the views
 * share one layout whose innermost step leaves room for four rows of `inner`
 * elements, and this one takes row `slot` of them (now and then moved a little,
 * onto a neighbour); else its gaps and offset are random. */
typedef struct rview {
    int64_t off, stride[4];
} rview;

static rview random_view(const int64_t *shape, int64_t max_off, int slot, const int *order, int64_t inner,
                         int64_t base)
{
    rview v;
    v.stride[3] = 1;
    int64_t span = slot >= 0 ? 4 * inner : shape[3] + (int64_t)(fab_test_rand_u64() % 3); /* a step passes it */
    for (int i = 0; i < 3; i++) {
        int dim = order[i];
        v.stride[dim] = span + (slot < 0 && fab_test_rand_u64() % 2 ? (int64_t)(fab_test_rand_u64() % 9) : 0);
        span = v.stride[dim] * shape[dim];
    }
    if (slot >= 0)
        v.off = base + slot * inner + (fab_test_rand_u64() % 6 == 0 ? (int64_t)(fab_test_rand_u64() % 3) : 0);
    else
        v.off = (int64_t)(fab_test_rand_u64() % (uint64_t)(max_off + 1));
    return v;
}

static void shuffle(int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(fab_test_rand_u64() % (uint64_t)(i + 1)), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static int64_t rview_at(const rview *v, const int64_t *shape, int64_t e) /* row-major element e */
{
    int64_t off = v->off;
    for (int i = 3; i >= 0; i--) {
        off += e % shape[i] * v->stride[i];
        e /= shape[i];
    }
    return off;
}

/* The overlap checks against brute force: dout (an input) and dq, dk, dv as random
 * views of one buffer. Where two of them share an element the backward must refuse
 * (and write nothing); where none do, whatever their spans, it must run, write
 * exactly its outputs' elements, and give what separate buffers get, bit for bit.
 * CPU, f32: any stride is accepted there. */
static void test_overlap_random(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    if (fab_context_backend(ctx) != FAB_BACKEND_CPU) {
        fab_context_destroy(ctx);
        print_message("SKIP: CUDA needs 16-byte aligned strides; the checks are the same code\n");
        skip();
    }
    const fab_dtype dt = FAB_DTYPE_F32;
    enum { N = 2048, CASES = 600 };
    double *hb = malloc(sizeof(double) * N), *got = malloc(sizeof(double) * N), *tmp = malloc(sizeof(double) * 256);
    double *ref[3];
    unsigned char *owner = malloc(N);
    assert_non_null(hb);
    assert_non_null(got);
    assert_non_null(tmp);
    assert_non_null(owner);
    for (int i = 0; i < 3; i++)
        assert_non_null(ref[i] = malloc(sizeof(double) * 256));
    int refused = 0, interleaved = 0, apart = 0;
    for (int c = 0; c < CASES; c++) {
        int64_t shape[4] = {1 + (int64_t)(fab_test_rand_u64() % 2), 1 + (int64_t)(fab_test_rand_u64() % 3),
                            1 + (int64_t)(fab_test_rand_u64() % 2), 1 + (int64_t)(fab_test_rand_u64() % 4)};
        int64_t n = shape[0] * shape[1] * shape[2] * shape[3], lshape[3] = {shape[0], shape[2], shape[1]};
        rview v[4]; /* dout, dq, dk, dv */
        int64_t hi[4] = {0};
        int family = c % 2, slots[4] = {0, 1, 2, 3}, order[3] = {0, 1, 2};
        int64_t inner = shape[3] + (int64_t)(fab_test_rand_u64() % 2), base = (int64_t)(fab_test_rand_u64() % 8);
        shuffle(slots, 4);
        shuffle(order, 3); /* the outer dims' nesting, shared in a family */
        for (int i = 0; i < 4; i++) {
            if (!family)
                shuffle(order, 3);
            v[i] = random_view(shape, 48, family ? slots[i] : -1, order, inner, base);
            hi[i] = rview_at(&v[i], shape, n - 1) + 1;
            assert_true(hi[i] <= N);
        }
        memset(owner, 0, N);
        int shared = 0, spans_meet = 0;
        for (int i = 0; i < 4; i++)
            for (int64_t e = 0; e < n; e++) {
                int64_t at = rview_at(&v[i], shape, e);
                shared |= owner[at] != 0;
                owner[at] |= (unsigned char)(1u << i);
            }
        for (int i = 0; i < 4; i++)
            for (int j = i + 1; j < 4; j++)
                spans_meet |= v[i].off < hi[j] && v[j].off < hi[i];

        double hq[256], hk[256], hv[256];
        fab_test_fill_uniform(hq, n, -1, 1);
        fab_test_fill_uniform(hk, n, -1, 1);
        fab_test_fill_uniform(hv, n, -1, 1);
        fab_test_fill_uniform(hb, N, -1, 1);
        void *q = fab_test_upload(ctx, dt, hq, n, NULL), *k = fab_test_upload(ctx, dt, hk, n, NULL);
        void *vv = fab_test_upload(ctx, dt, hv, n, NULL);
        char *big = fab_test_upload(ctx, dt, hb, N, hb);
        for (int64_t e = 0; e < n; e++)
            tmp[e] = hb[rview_at(&v[0], shape, e)]; /* dout, contiguous */
        void *dout = fab_test_upload(ctx, dt, tmp, n, NULL);
        void *out = fab_test_alloc_poisoned(ctx, dt, n), *lse = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, n / shape[3]);
        void *sep[3];
        for (int i = 0; i < 3; i++)
            sep[i] = fab_test_alloc_poisoned(ctx, dt, n);
        fab_attention_params fp;
        memset(&fp, 0, sizeof fp);
        assert_int_equal(fab_tensor_make(q, dt, 4, shape, &fp.q), FAB_OK);
        assert_int_equal(fab_tensor_make(k, dt, 4, shape, &fp.k), FAB_OK);
        assert_int_equal(fab_tensor_make(vv, dt, 4, shape, &fp.v), FAB_OK);
        assert_int_equal(fab_tensor_make(out, dt, 4, shape, &fp.out), FAB_OK);
        assert_int_equal(fab_tensor_make(lse, FAB_DTYPE_F32, 3, lshape, &fp.lse), FAB_OK);
        if (fab_attention_forward(ctx, &fp) != FAB_OK)
            fail_msg("case %d: forward: %s", c, fab_last_error());
        fab_attention_backward_params bp;
        memset(&bp, 0, sizeof bp);
        bp.q = fp.q, bp.k = fp.k, bp.v = fp.v, bp.out = fp.out, bp.lse = fp.lse;
        assert_int_equal(fab_tensor_make(dout, dt, 4, shape, &bp.dout), FAB_OK);
        fab_tensor *outs[3] = {&bp.dq, &bp.dk, &bp.dv};
        for (int i = 0; i < 3; i++)
            assert_int_equal(fab_tensor_make(sep[i], dt, 4, shape, outs[i]), FAB_OK);
        if (fab_attention_backward(ctx, &bp) != FAB_OK)
            fail_msg("case %d: backward into separate buffers: %s", c, fab_last_error());
        for (int i = 0; i < 3; i++)
            fab_test_download(ctx, dt, sep[i], n, ref[i]);

        fab_tensor *views[4] = {&bp.dout, &bp.dq, &bp.dk, &bp.dv};
        for (int i = 0; i < 4; i++) {
            views[i]->data = big + (size_t)v[i].off * sizeof(float);
            memcpy(views[i]->stride, v[i].stride, sizeof v[i].stride);
        }
        fab_status s = fab_attention_backward(ctx, &bp);
        fab_test_download(ctx, dt, big, N, got);
        if (shared) {
            refused++;
            fab_test_expect_error(s, FAB_ERR_INVALID_ARGUMENT, "overlaps");
            for (int64_t i = 0; i < N; i++)
                if (!(got[i] == hb[i]))
                    fail_msg("case %d: a refused backward wrote element %lld", c, (long long)i);
        } else {
            if (s != FAB_OK)
                fail_msg("case %d: views sharing no element refused: %s", c, fab_last_error());
            interleaved += spans_meet;
            apart += !spans_meet;
            for (int i = 1; i < 4; i++)
                for (int64_t e = 0; e < n; e++) {
                    int64_t at = rview_at(&v[i], shape, e);
                    if (!(got[at] == ref[i - 1][e]))
                        fail_msg("case %d: d%c[%lld] = %g in the shared buffer, %g in its own", c, "qkv"[i - 1],
                                 (long long)e, got[at], ref[i - 1][e]);
                    got[at] = hb[at]; /* checked */
                }
            for (int64_t i = 0; i < N; i++)
                if (!(got[i] == hb[i]))
                    fail_msg("case %d: element %lld of no output was written", c, (long long)i);
        }
        void *bufs[9] = {q, k, vv, big, dout, out, lse, sep[0], sep[1]};
        for (int i = 0; i < 9; i++)
            fab_test_free(ctx, bufs[i]);
        fab_test_free(ctx, sep[2]);
    }
    print_message("# %d cases: %d refused (an element shared), %d interleaved (spans meet, elements do not), %d apart\n",
                  CASES, refused, interleaved, apart);
    if (refused < CASES / 10 || interleaved < CASES / 10)
        fail_msg("the generator is off: %d refused, %d interleaved of %d", refused, interleaved, CASES);
    for (int i = 0; i < 3; i++)
        free(ref[i]);
    free(owner);
    free(tmp);
    free(got);
    free(hb);
    fab_context_destroy(ctx);
}

/* The CPU attention's tile products on AMX (attention_cpu_tile.h, amx_*), where
 * the CPU has AMX-BF16: bf16 inputs whose head dim pads to a multiple of 32. The
 * other tests check those results against the reference; here the forward's
 * output must differ in its bits from the AVX-512 path's (FAB_ATTN_CPU_AMX=0),
 * and dq from that of the same forward followed by a backward without AMX, so the
 * dispatch is real in both passes, while both stay within a bf16 rounding or so
 * of the AVX-512 path and move few bf16 values (out, dq, dk, dv); the backward's
 * two schedules must agree bit for bit; head dim 48 (padded to 48) must stay on
 * the AVX-512 path: the same bits; and with one key dq and dk are exactly 0. (A
 * CPU with AMX whose OS refuses the tile state, e.g. by seccomp, would fail here:
 * its device name says amx-bf16 but nothing runs on it.) */
static void test_cpu_amx(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    const char *off = getenv("FAB_ATTN_CPU_AMX"), *isa = getenv("FAB_ATTN_CPU_ISA");
    if (fab_context_backend(ctx) != FAB_BACKEND_CPU || !strstr(fab_context_device_name(ctx), "amx-bf16") ||
        (off && strcmp(off, "0") == 0) || (isa && *isa)) {
        print_message("SKIP: no AMX path here (%s; FAB_ATTN_CPU_AMX=%s, FAB_ATTN_CPU_ISA=%s)\n",
                      fab_context_device_name(ctx), off ? off : "", isa ? isa : "");
        fab_context_destroy(ctx);
        skip();
    }
    static const kv_det_case shapes[] = {{270, 128, 200, FAB_DTYPE_BF16},
                                         {200, 64, -1, FAB_DTYPE_BF16},
                                         {150, 32, -1, FAB_DTYPE_BF16},
                                         {130, 96, 40, FAB_DTYPE_BF16},
                                         {140, 48, -1, FAB_DTYPE_BF16}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int64_t sl = shapes[i].s, d = shapes[i].d, nq = 2 * sl * 4 * d; /* det_run: b 2, hq 4 */
        const size_t cap = (size_t)(2 * sl * 4 * d * 2 + 2 * sl * 2 * d * 2) * 2 + 2 * 4 * (size_t)sl * 4;
        /* AMX in both passes, in the forward only, in neither */
        size_t n1, n2, n3;
        unsigned char *r1 = malloc(cap), *r2 = malloc(cap), *r3 = malloc(cap);
        assert_true(r1 && r2 && r3);
        kv_det_run(ctx, &shapes[i], r1, &n1);
        det_backward_amx = "0";
        kv_det_run(ctx, &shapes[i], r2, &n2);
        det_backward_amx = NULL;
        setenv("FAB_ATTN_CPU_AMX", "0", 1);
        kv_det_run(ctx, &shapes[i], r3, &n3);
        unsetenv("FAB_ATTN_CPU_AMX");
        assert_int_equal(n1, cap);
        assert_int_equal(n2, cap);
        assert_int_equal(n3, cap);
        /* det_run's bytes: out, lse (f32), dq, dk, dv. out: AMX against none; the
         * gradients: against the same forward with the backward off. A bf16 value
         * rarely moves when only f32 roundings change; one product whose P or dS
         * lost its lo half (rounded to bf16) moves about 40% of them */
        const int64_t nk = 2 * sl * 2 * d, nlse = 2 * 4 * sl;
        const size_t at[4] = {0, (size_t)(2 * nq + 4 * nlse), (size_t)(4 * nq + 4 * nlse),
                              (size_t)(4 * nq + 4 * nlse + 2 * nk)};
        const int64_t len[4] = {nq, nq, nk, nk};
        const char *what[4] = {"out", "dq", "dk", "dv"};
        for (int w = 0; w < 4; w++) {
            const uint16_t *o1 = (const uint16_t *)(r1 + at[w]), *o2 = (const uint16_t *)((w ? r2 : r3) + at[w]);
            const uint16_t *o3 = (const uint16_t *)(r3 + at[w]);
            int64_t differ = 0;
            float big = 0;
            for (int64_t e = 0; e < len[w]; e++)
                big = fmaxf(big, fabsf(fab_bf16_to_f32(o3[e])));
            for (int64_t e = 0; e < len[w]; e++) {
                const float x1 = fab_bf16_to_f32(o1[e]), x3 = fab_bf16_to_f32(o3[e]);
                differ += o1[e] != o2[e];
                if (!(fabsf(x1 - x3) <= 1e-3f * big + 1e-2f * fabsf(x3)))
                    fail_msg("attention AMX, head dim %lld: %s[%lld] = %g, the AVX-512 path's %g", (long long)d,
                             what[w], (long long)e, x1, x3);
            }
            print_message("head dim %lld: %lld of %lld %s values differ from the %s\n", (long long)d,
                          (long long)differ, (long long)len[w], what[w],
                          w ? "backward's without AMX" : "forward's without AMX");
            if (d % 32 == 0 ? differ == 0 : differ != 0)
                fail_msg("attention, head dim %lld: the AMX path %s (%s)", (long long)d,
                         d % 32 == 0 ? "did not run (the same bits as the AVX-512 path)"
                                     : "ran for a head dim it must not",
                         what[w]);
            if (differ * 20 > len[w])
                fail_msg("attention AMX, head dim %lld: %lld of %lld %s values differ from the path without AMX, "
                         "more than f32 roundings move (is P or dS rounded to bf16?)",
                         (long long)d, (long long)differ, (long long)len[w], what[w]);
        }
        free(r3);
        if (i == 0) {
            /* 8 threads against det_run's 4 (batch, kv head) units: the two-pass
             * backward, which must give the one pass's bits on AMX too */
            fab_context_config cfg;
            memset(&cfg, 0, sizeof cfg);
            cfg.num_threads = 8;
            fab_context *wide = fab_test_context_with(&cfg);
            kv_det_run(wide, &shapes[i], r2, &n2);
            fab_context_destroy(wide);
            if (memcmp(r1, r2, cap) != 0)
                fail_msg("attention AMX, head dim %lld: the two-pass backward differs from the one pass", (long long)d);
        }
        free(r1), free(r2);
    }
    /* one key: O = V, so dP - D = 0 and dq, dk are exactly 0 (bwd_rowdot sums D as
     * the AMX kernel sums dP) */
    {
        const int64_t sq = 64, hq = 2, d = 64, qs[4] = {1, sq, hq, d}, ks[4] = {1, 1, hq, d}, ls[3] = {1, hq, sq};
        double *x = malloc(sizeof(double) * (size_t)(2 * sq * hq * d + 2 * hq * d));
        assert_non_null(x);
        fab_test_fill_uniform(x, 2 * sq * hq * d + 2 * hq * d, -1, 1);
        const fab_dtype bf = FAB_DTYPE_BF16;
        void *q = fab_test_upload(ctx, bf, x, sq * hq * d, NULL), *dout = fab_test_upload(ctx, bf, x + sq * hq * d, sq * hq * d, NULL);
        void *k = fab_test_upload(ctx, bf, x + 2 * sq * hq * d, hq * d, NULL);
        void *v = fab_test_upload(ctx, bf, x + 2 * sq * hq * d + hq * d, hq * d, NULL);
        void *out = fab_test_alloc_poisoned(ctx, bf, sq * hq * d), *lse = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, hq * sq);
        void *dq = fab_test_alloc_poisoned(ctx, bf, sq * hq * d), *dk = fab_test_alloc_poisoned(ctx, bf, hq * d);
        void *dv = fab_test_alloc_poisoned(ctx, bf, hq * d);
        fab_attention_params f = dense_forward(bf, qs, ks, q, k, v, out);
        fab_tensor_make(lse, FAB_DTYPE_F32, 3, ls, &f.lse);
        assert_int_equal(fab_attention_forward(ctx, &f), FAB_OK);
        fab_attention_backward_params p;
        memset(&p, 0, sizeof p);
        p.q = f.q, p.k = f.k, p.v = f.v, p.out = f.out, p.lse = f.lse;
        fab_tensor_make(dout, bf, 4, qs, &p.dout);
        fab_tensor_make(dq, bf, 4, qs, &p.dq);
        fab_tensor_make(dk, bf, 4, ks, &p.dk);
        fab_tensor_make(dv, bf, 4, ks, &p.dv);
        assert_int_equal(fab_attention_backward(ctx, &p), FAB_OK);
        double *g = malloc(sizeof(double) * (size_t)(sq * hq * d));
        assert_non_null(g);
        fab_test_download(ctx, bf, dq, sq * hq * d, g);
        for (int64_t e = 0; e < sq * hq * d; e++)
            if (g[e] != 0)
                fail_msg("attention AMX, one key: dq[%lld] = %g, not 0", (long long)e, g[e]);
        fab_test_download(ctx, bf, dk, hq * d, g);
        for (int64_t e = 0; e < hq * d; e++)
            if (g[e] != 0)
                fail_msg("attention AMX, one key: dk[%lld] = %g, not 0", (long long)e, g[e]);
        free(g), free(x);
        fab_test_free(ctx, q), fab_test_free(ctx, dout), fab_test_free(ctx, k), fab_test_free(ctx, v);
        fab_test_free(ctx, out), fab_test_free(ctx, lse), fab_test_free(ctx, dq), fab_test_free(ctx, dk);
        fab_test_free(ctx, dv);
    }
    fab_context_destroy(ctx);
}

/* The CUDA backward's two paths on a problem built so that they must differ, for
 * each size T of the dkdv kernel's key blocks (64, 128) and 3T keys: with q = 0
 * every probability is 1/3T and, with dout = e0 and v = +-e0 half and half, D = 0
 * and dS = +-s exactly. Keys [0, T) (all dS = +s) and [2T, 3T) (all -s) have
 * k = G = 2^14 in every column: the partial dq sums of the first and third key
 * blocks are X and -X exactly. The second block holds one key with k = 2^-5 (and
 * dS = +s) per 16-key slice: y = s 2^-5 per slice, below half an f32 ulp of X,
 * but T/16 y is above it. The deterministic path sums every key tile into one
 * f32 accumulator per element, slice after slice: X + y rounds back to X each
 * time, then the third block cancels X: dq = 0. The fast path sums each key block
 * apart (T/16 y exactly) and adds the three partials with atomics: whatever their
 * order the result is T/16 y, or it rounded to an ulp or more of X, never 0. So
 * every dq element of the fast run is non-zero, and the bits differ from the
 * deterministic run: the fast path really ran, with per-block partials. (The exact
 * dq, T/16 y, is far below the size of the terms; neither path is checked against
 * it here.) */
static void test_fast_path(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    if (fab_context_backend(ctx) != FAB_BACKEND_CUDA) {
        fab_context_destroy(ctx);
        print_message("SKIP: only the CUDA backward has two paths (the CPU one is deterministic always)\n");
        skip();
    }
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deterministic = 1;
    fab_context *det = fab_test_context_with(&cfg);
    enum { SQ = 16, HQ2 = 2, HKV2 = 1, D2 = 64 };
    /* the sm80 dkdv kernel with 64 and 128 keys per block, then the Hopper one (128
     * keys) where it runs (sm_90; elsewhere the sm80 one again) */
    for (int variant = 0; variant < 3; variant++) {
        const int T = variant == 0 ? 64 : 128; /* keys per dkdv block */
        const int SK = 3 * T;
        char keys[16];
        snprintf(keys, sizeof keys, "%d", T);
        setenv("FAB_ATTN_BWD_KEYS", keys, 1);
        if (variant < 2)
            setenv("FAB_ATTN_SM90", "0", 1);
        else
            unsetenv("FAB_ATTN_SM90");
        const int64_t nq = SQ * HQ2 * D2, nk = SK * HKV2 * D2;
        double *x = calloc((size_t)(nq + 3 * nk), sizeof(double)), *r1 = malloc(sizeof(double) * nq),
               *r2 = malloc(sizeof(double) * nq);
        assert_true(x && r1 && r2);
        double *hq_ = x, *hk = x + nq, *hv = hk + nk, *hdo = hv + nk; /* q stays 0 */
        for (int64_t i = 0; i < SQ * HQ2; i++)
            hdo[i * D2] = 1;
        for (int j = 0; j < SK; j++) {
            int plus = j < T || (j < 2 * T && j % 16 < 8); /* dS = +s: tile 0, first half of each slice of tile 1 */
            hv[j * D2] = plus ? 1 : -1;
            for (int c = 0; c < D2; c++)
                hk[j * D2 + c] = j < T || j >= 2 * T ? 16384.0 : (j % 16 == 0 ? 1.0 / 32 : 0);
        }
        for (int t = 0; t < 2; t++) {
            fab_dtype dt = t ? FAB_DTYPE_F16 : FAB_DTYPE_BF16;
            int64_t qs[4] = {1, SQ, HQ2, D2}, ks[4] = {1, SK, HKV2, D2}, ls[3] = {1, HQ2, SQ};
            void *q = fab_test_upload(ctx, dt, hq_, nq, NULL), *k = fab_test_upload(ctx, dt, hk, nk, NULL);
            void *v = fab_test_upload(ctx, dt, hv, nk, NULL), *dout = fab_test_upload(ctx, dt, hdo, nq, NULL);
            void *out = fab_test_alloc_poisoned(ctx, dt, nq), *lse = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, HQ2 * SQ);
            void *dq = fab_test_alloc_poisoned(ctx, dt, nq), *dk = fab_test_alloc_poisoned(ctx, dt, nk);
            void *dv = fab_test_alloc_poisoned(ctx, dt, nk);
            fab_attention_params f = dense_forward(dt, qs, ks, q, k, v, out);
            fab_tensor_make(lse, FAB_DTYPE_F32, 3, ls, &f.lse);
            f.scale = 1;
            assert_int_equal(fab_attention_forward(ctx, &f), FAB_OK);
            fab_attention_backward_params p;
            memset(&p, 0, sizeof p);
            p.q = f.q, p.k = f.k, p.v = f.v, p.out = f.out, p.lse = f.lse, p.scale = 1;
            fab_tensor_make(dout, dt, 4, qs, &p.dout);
            fab_tensor_make(dq, dt, 4, qs, &p.dq);
            fab_tensor_make(dk, dt, 4, ks, &p.dk);
            fab_tensor_make(dv, dt, 4, ks, &p.dv);
            assert_int_equal(fab_attention_backward(ctx, &p), FAB_OK);
            fab_test_download(ctx, dt, dq, nq, r1);
            assert_int_equal(fab_synchronize(ctx), FAB_OK);
            assert_int_equal(fab_attention_backward(det, &p), FAB_OK);
            assert_int_equal(fab_synchronize(det), FAB_OK);
            fab_test_download(ctx, dt, dq, nq, r2);
            int64_t ndiff = 0;
            for (int64_t i = 0; i < nq; i++) {
                if (!(r1[i] != 0 && isfinite(r1[i])))
                    fail_msg("attention fast path %s, %d keys per dkdv block: dq[%lld] = %g (deterministic path: %g): is "
                             "dq still summed in one accumulator per element?",
                             fab_dtype_name(dt), T, (long long)i, r1[i], r2[i]);
                ndiff += r1[i] != r2[i];
            }
            if (ndiff == 0)
                fail_msg("attention %s, %d keys per dkdv block: dq of the fast and the deterministic path are identical",
                         fab_dtype_name(dt), T);
            void *bufs[9] = {q, k, v, dout, out, lse, dq, dk, dv};
            for (int i = 0; i < 9; i++)
                fab_test_free(ctx, bufs[i]);
        }
        free(x), free(r1), free(r2);
    }
    unsetenv("FAB_ATTN_BWD_KEYS");
    unsetenv("FAB_ATTN_SM90");
    fab_context_destroy(det);
    fab_context_destroy(ctx);
}

/* ---------------------------------------------------------- bad arguments */

typedef struct bad_setup {
    void *q, *k, *v, *dout, *out, *lse, *dq, *dk, *dv, *cu;
    fab_attention_params f;          /* a valid dense bf16 call */
    fab_attention_params fv;         /* its varlen twin (not valid as is: see cu) */
    fab_attention_backward_params b; /* a valid backward */
    unsigned char before[5][16384];
} bad_setup;

enum { B = 2, S = 16, HQ = 4, HKV = 2, D = 64 };
/* cumulative offsets, 3 each: good q, good k, then bad variants */
static const int32_t cu_host[] = {0, 10, 32, 0, 12, 32, 0, 20, 10, 0, 10, 40, 1, 10, 32, 0, 10, 30, 0, 22, 32};
enum { CU_Q = 0, CU_K = 3, CU_NONMONO = 6, CU_PAST = 9, CU_FIRST = 12, CU_SHORT = 15, CU_LONG0 = 18 };

static void bad_setup_make(fab_context *ctx, bad_setup *s)
{
    memset(s, 0, sizeof *s);
    int64_t nq = B * S * HQ * D, nk = B * S * HKV * D;
    double *x = malloc(sizeof(double) * (size_t)nq);
    assert_non_null(x);
    fab_test_fill_uniform(x, nq, -1, 1);
    s->q = fab_test_upload(ctx, FAB_DTYPE_BF16, x, nq, NULL);
    s->dout = fab_test_upload(ctx, FAB_DTYPE_BF16, x, nq, NULL);
    s->k = fab_test_upload(ctx, FAB_DTYPE_BF16, x, nk, NULL);
    s->v = fab_test_upload(ctx, FAB_DTYPE_BF16, x, nk, NULL);
    s->out = fab_test_alloc_poisoned(ctx, FAB_DTYPE_BF16, nq);
    s->lse = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, B * HQ * S);
    s->dq = fab_test_alloc_poisoned(ctx, FAB_DTYPE_BF16, nq);
    s->dk = fab_test_alloc_poisoned(ctx, FAB_DTYPE_BF16, nk);
    s->dv = fab_test_alloc_poisoned(ctx, FAB_DTYPE_BF16, nk);
    /* room past the offsets, so an output aimed at them overlaps nothing else */
    assert_int_equal(fab_alloc(ctx, 65536, &s->cu), FAB_OK);
    assert_int_equal(fab_copy(ctx, s->cu, cu_host, sizeof cu_host), FAB_OK);
    assert_int_equal(fab_synchronize(ctx), FAB_OK);
    free(x);
    int64_t qs[4] = {B, S, HQ, D}, ks[4] = {B, S, HKV, D}, ls[3] = {B, HQ, S};
    fab_attention_params *f = &s->f;
    assert_int_equal(fab_tensor_make(s->q, FAB_DTYPE_BF16, 4, qs, &f->q), FAB_OK);
    assert_int_equal(fab_tensor_make(s->k, FAB_DTYPE_BF16, 4, ks, &f->k), FAB_OK);
    assert_int_equal(fab_tensor_make(s->v, FAB_DTYPE_BF16, 4, ks, &f->v), FAB_OK);
    assert_int_equal(fab_tensor_make(s->out, FAB_DTYPE_BF16, 4, qs, &f->out), FAB_OK);
    assert_int_equal(fab_tensor_make(s->lse, FAB_DTYPE_F32, 3, ls, &f->lse), FAB_OK);
    int64_t vq[3] = {B * S, HQ, D}, vk[3] = {B * S, HKV, D}, vl[2] = {HQ, B * S}, three = 3;
    fab_attention_params *g = &s->fv;
    assert_int_equal(fab_tensor_make(s->q, FAB_DTYPE_BF16, 3, vq, &g->q), FAB_OK);
    assert_int_equal(fab_tensor_make(s->k, FAB_DTYPE_BF16, 3, vk, &g->k), FAB_OK);
    assert_int_equal(fab_tensor_make(s->v, FAB_DTYPE_BF16, 3, vk, &g->v), FAB_OK);
    assert_int_equal(fab_tensor_make(s->out, FAB_DTYPE_BF16, 3, vq, &g->out), FAB_OK);
    assert_int_equal(fab_tensor_make(s->lse, FAB_DTYPE_F32, 2, vl, &g->lse), FAB_OK);
    assert_int_equal(fab_tensor_make((int32_t *)s->cu + CU_Q, FAB_DTYPE_I32, 1, &three, &g->cu_seqlens_q), FAB_OK);
    assert_int_equal(fab_tensor_make((int32_t *)s->cu + CU_K, FAB_DTYPE_I32, 1, &three, &g->cu_seqlens_k), FAB_OK);
    fab_attention_backward_params *b = &s->b;
    b->q = f->q, b->k = f->k, b->v = f->v, b->out = f->out, b->lse = f->lse;
    assert_int_equal(fab_tensor_make(s->dout, FAB_DTYPE_BF16, 4, qs, &b->dout), FAB_OK);
    assert_int_equal(fab_tensor_make(s->dq, FAB_DTYPE_BF16, 4, qs, &b->dq), FAB_OK);
    assert_int_equal(fab_tensor_make(s->dk, FAB_DTYPE_BF16, 4, ks, &b->dk), FAB_OK);
    assert_int_equal(fab_tensor_make(s->dv, FAB_DTYPE_BF16, 4, ks, &b->dv), FAB_OK);
    void *outs[5] = {s->out, s->lse, s->dq, s->dk, s->dv};
    for (int i = 0; i < 5; i++)
        fab_test_download_bytes(ctx, outs[i], i == 1 ? B * HQ * S * 4 : (i == 3 || i == 4 ? B * S * HKV * D * 2 : B * S * HQ * D * 2),
                                s->before[i]);
}

/* every output byte as it was before the rejected calls */
static void bad_setup_check_and_free(fab_context *ctx, bad_setup *s)
{
    void *outs[5] = {s->out, s->lse, s->dq, s->dk, s->dv};
    static unsigned char after[16384];
    for (int i = 0; i < 5; i++) {
        size_t n = i == 1 ? B * HQ * S * 4 : (i == 3 || i == 4 ? B * S * HKV * D * 2 : B * S * HQ * D * 2);
        fab_test_download_bytes(ctx, outs[i], n, after);
        if (memcmp(after, s->before[i], n) != 0)
            fail_msg("a rejected attention call wrote output %d", i);
    }
    void *all[10] = {s->q, s->k, s->v, s->dout, s->out, s->lse, s->dq, s->dk, s->dv, s->cu};
    for (int i = 0; i < 10; i++)
        fab_test_free(ctx, all[i]);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    static bad_setup s;
    bad_setup_make(ctx, &s);
    fab_attention_params p;
    const fab_status UNSUP = FAB_ERR_UNSUPPORTED;
    int32_t *cu = s.cu;

#define EXPECT(base, mutation, status, needle)                                 \
    do {                                                                       \
        p = (base);                                                            \
        mutation;                                                              \
        fab_test_expect_error(fab_attention_forward(ctx, &p), status, needle); \
    } while (0)

    fab_test_expect_error(fab_attention_forward(NULL, &s.f), INVALID, "ctx is NULL");
    fab_test_expect_error(fab_attention_forward(ctx, NULL), INVALID, "params pointer is NULL");
    /* options */
    EXPECT(s.f, p.causal = 2, INVALID, "p.causal=2 must be 0 or 1");
    EXPECT(s.f, p.window = 3, INVALID, "p.window=3");
    EXPECT(s.f, (p.window = 1, p.window_left = -2), INVALID, "p.window_left=-2");
    EXPECT(s.f, (p.window = 1, p.window_right = -5), INVALID, "p.window_right=-5");
    EXPECT(s.f, p.window_left = 8, INVALID, "p.window=0");
    EXPECT(s.f, p.scale = NAN, INVALID, "p.scale=nan");
    EXPECT(s.f, p.scale = INFINITY, INVALID, "p.scale=inf");
    EXPECT(s.f, p.softcap = -1, INVALID, "p.softcap=-1");
    EXPECT(s.f, p.softcap = NAN, INVALID, "p.softcap=nan");
    EXPECT(s.f, p.trust_cu_seqlens = 2, INVALID, "p.trust_cu_seqlens=2");
    EXPECT(s.f, p.max_seqlen_q = -1, INVALID, "p.max_seqlen_q=-1");
    EXPECT(s.f, p.max_seqlen_k = 16, INVALID, "must be 0 without cu_seqlens");
    EXPECT(s.f, p.trust_cu_seqlens = 1, INVALID, "p.trust_cu_seqlens=1 without cu_seqlens");
    /* tensors */
    EXPECT(s.f, p.q.ndim = 3, INVALID, "q.ndim=3 must be 4");
    EXPECT(s.f, p.q.stride[3] = 2, INVALID, "q.stride[3]=2 must be 1");
    EXPECT(s.f, p.k.stride[3] = 0, INVALID, "k.stride[3]=0 must be 1");
    EXPECT(s.f, p.q.data = NULL, INVALID, "q.data is NULL");
    EXPECT(s.f, p.v.data = (char *)s.v + 1, INVALID, "v.data=");
    EXPECT(s.f, p.out.stride[1] = -1, INVALID, "out.stride[1]=-1");
    EXPECT(s.f, p.q.dtype = FAB_DTYPE_I32, UNSUP, "q.dtype=i32 is not supported");
    EXPECT(s.f, p.k.dtype = FAB_DTYPE_F16, INVALID, "k.dtype=f16 must equal q.dtype=bf16");
    EXPECT(s.f, p.v.dtype = FAB_DTYPE_F16, INVALID, "v.dtype=f16 must equal q.dtype=bf16");
    EXPECT(s.f, p.out.dtype = FAB_DTYPE_F32, INVALID, "out.dtype=f32 must equal q.dtype=bf16");
    EXPECT(s.f, p.k.shape[3] = 32, INVALID, "k.shape[3]=32 must equal q.shape[3]=64 (head dims must match)");
    EXPECT(s.f, p.v.shape[3] = 32, INVALID, "v.shape[3]=32 must equal q.shape[3]=64");
    EXPECT(s.f, p.v.shape[1] = 8, INVALID, "v.shape[1]=8 must equal k.shape[1]=16");
    EXPECT(s.f, (p.k.shape[0] = 1, p.v.shape[0] = 1), INVALID, "k.shape[0]=1 must equal q.shape[0]=2");
    EXPECT(s.f, (p.k.shape[2] = 3, p.v.shape[2] = 3), INVALID, "heads_q=q.shape[2]=4 must be a multiple of heads_kv=k.shape[2]=3");
    EXPECT(s.f, (p.k.shape[2] = 0, p.v.shape[2] = 0), INVALID, "heads_kv must be >= 1");
    EXPECT(s.f, (p.q.shape[2] = 0, p.out.shape[2] = 0), INVALID, "heads_q must be >= 1");
    EXPECT(s.f, (p.q.shape[3] = 0, p.k.shape[3] = 0, p.v.shape[3] = 0, p.out.shape[3] = 0), INVALID, "head_dim must be >= 1");
    EXPECT(s.f, p.out.shape[1] = 15, INVALID, "out.shape[1]=15 must equal q.shape[1]=16");
    EXPECT(s.f, p.out.ndim = 3, INVALID, "out.ndim=3 must be 4");
    /* lse */
    EXPECT(s.f, p.lse.dtype = FAB_DTYPE_F16, INVALID, "lse.dtype=f16 must be f32");
    EXPECT(s.f, (p.lse.shape[2] = 8, p.lse.stride[1] = 8, p.lse.stride[0] = 32), INVALID, "lse.shape[2]=8 must be 16");
    EXPECT(s.f, (p.lse.shape[1] = 2, p.lse.stride[0] = 32), INVALID, "lse.shape[1]=2 must be 4");
    EXPECT(s.f, p.lse.ndim = 2, INVALID, "lse.ndim=2 must be 3");
    EXPECT(s.f, p.lse.stride[0] = 128, INVALID, "lse.stride[0]=128 must be 64");
    /* aliasing (each time the smaller span lies inside the other's allocation) */
    EXPECT(s.f, p.out.data = s.q, INVALID, "out overlaps q");
    EXPECT(s.f, p.k.data = (char *)s.out + 64, INVALID, "out overlaps k");
    EXPECT(s.f, p.lse.data = s.out, INVALID, "out overlaps lse");
    EXPECT(s.f, p.lse.data = s.v, INVALID, "lse overlaps v");
    /* an output that would write one element twice */
    EXPECT(s.f, p.out.stride[1] = 0, INVALID, "out.stride[1]=0 makes elements of out overlap");
    EXPECT(s.f, p.out.stride[2] = 32, INVALID, "out.stride[2]=32 makes elements of out overlap (must be >= 64");
    /* masks that leave a query row without keys */
    EXPECT(s.f, (p.k.shape[1] = 8, p.v.shape[1] = 8, p.causal = 1), INVALID, "causal mask with seqlen_q=16 > seqlen_k=8 leaves query row 0 without keys");
    EXPECT(s.f, (p.k.shape[1] = 8, p.v.shape[1] = 8, p.window = 1, p.window_left = -1, p.window_right = 7), INVALID,
           "the window with seqlen_q=16 > seqlen_k=8 leaves query row 0 without keys");
    EXPECT(s.f, (p.k.shape[1] = 8, p.v.shape[1] = 8, p.causal = 1, p.window = 1, p.window_left = 4, p.window_right = 20), INVALID,
           "causal mask and window");
    EXPECT(s.f, (p.k.shape[1] = 0, p.v.shape[1] = 0), INVALID, "seqlen_k=0 with seqlen_q=16");
    /* head dims the CPU cannot do (a small valid-looking problem) */
    if (fab_test_backend() == FAB_BACKEND_CPU) {
        int64_t s300[4] = {1, 1, 1, 300};
        EXPECT(s.f, (fab_tensor_make(s.q, FAB_DTYPE_BF16, 4, s300, &p.q), fab_tensor_make(s.k, FAB_DTYPE_BF16, 4, s300, &p.k),
                     fab_tensor_make(s.v, FAB_DTYPE_BF16, 4, s300, &p.v), fab_tensor_make(s.out, FAB_DTYPE_BF16, 4, s300, &p.out),
                     p.lse.shape[0] = p.lse.shape[1] = p.lse.shape[2] = 1),
               UNSUP, "head_dim=300 is not supported on the CPU");
    } else {
        static uint16_t host_buf[B * S * HQ * D];
        EXPECT(s.f, p.q.data = host_buf, INVALID, "q.data");
    }

    /* variable-length batches */
    EXPECT(s.fv, memset(&p.cu_seqlens_k, 0, sizeof p.cu_seqlens_k), INVALID, "cu_seqlens_q is set but cu_seqlens_k is absent");
    EXPECT(s.fv, memset(&p.cu_seqlens_q, 0, sizeof p.cu_seqlens_q), INVALID, "cu_seqlens_k is set but cu_seqlens_q is absent");
    EXPECT(s.fv, p.q = s.f.q, INVALID, "q.ndim=4 must be 3");
    EXPECT(s.fv, p.lse = s.f.lse, INVALID, "lse.ndim=3 must be 2");
    EXPECT(s.fv, p.lse.shape[1] = 16, INVALID, "lse.shape[1]=16 must be 32");
    EXPECT(s.fv, p.cu_seqlens_q.data = cu + CU_NONMONO, INVALID, "cu_seqlens_q is not monotone: cu_seqlens_q[2]=10 < cu_seqlens_q[1]=20");
    EXPECT(s.fv, p.cu_seqlens_k.data = cu + CU_NONMONO, INVALID, "cu_seqlens_k is not monotone");
    EXPECT(s.fv, p.cu_seqlens_q.data = cu + CU_PAST, INVALID, "cu_seqlens_q[2]=40 is past the end of q.shape[0] (32 rows)");
    EXPECT(s.fv, p.cu_seqlens_k.data = cu + CU_PAST, INVALID, "cu_seqlens_k[2]=40 is past the end of k.shape[0]");
    EXPECT(s.fv, p.cu_seqlens_q.data = cu + CU_FIRST, INVALID, "cu_seqlens_q[0]=1 must be 0");
    EXPECT(s.fv, p.cu_seqlens_q.data = cu + CU_SHORT, INVALID, "cu_seqlens_q[2]=30 must equal q.shape[0] (32)");
    EXPECT(s.fv, (p.cu_seqlens_q.data = cu + CU_LONG0, p.causal = 1), INVALID,
           "causal mask with seqlen_q=22 > seqlen_k=12 in sequence 0 leaves query row 0 without keys");
    EXPECT(s.fv, p.max_seqlen_q = 5, INVALID, "p.max_seqlen_q=5 is less than the longest query sequence (22)");
    EXPECT(s.fv, p.max_seqlen_k = 19, INVALID, "p.max_seqlen_k=19 is less than the longest key sequence (20)");
    EXPECT(s.fv, p.cu_seqlens_q.dtype = FAB_DTYPE_F32, INVALID, "cu_seqlens_q.dtype=f32 must be i32");
    EXPECT(s.fv, (p.cu_seqlens_k.ndim = 2, p.cu_seqlens_k.shape[1] = 1, p.cu_seqlens_k.stride[1] = 1), INVALID, "cu_seqlens_k must be 1-d");
    EXPECT(s.fv, p.cu_seqlens_k.shape[0] = 2, INVALID, "cu_seqlens_k.shape[0]=2 must equal cu_seqlens_q.shape[0]=3");
    EXPECT(s.fv, p.cu_seqlens_q.data = NULL, INVALID, "cu_seqlens_q.data is NULL");
    EXPECT(s.fv, p.out.data = cu, INVALID, "out overlaps cu_seqlens_q");
#undef EXPECT

    /* backward */
    fab_attention_backward_params b;
#define EXPECT_B(mutation, status, needle)                                      \
    do {                                                                        \
        b = s.b;                                                                \
        mutation;                                                               \
        fab_test_expect_error(fab_attention_backward(ctx, &b), status, needle); \
    } while (0)
    fab_test_expect_error(fab_attention_backward(NULL, &s.b), INVALID, "ctx is NULL");
    fab_test_expect_error(fab_attention_backward(ctx, NULL), INVALID, "params pointer is NULL");
    EXPECT_B(memset(&b.lse, 0, sizeof b.lse), INVALID, "lse is absent; the backward pass needs the forward's lse");
    EXPECT_B(b.dq.shape[1] = 15, INVALID, "dq.shape[1]=15 must equal q.shape[1]=16");
    EXPECT_B(b.dk.shape[2] = 4, INVALID, "dk.shape[2]=4 must equal k.shape[2]=2");
    EXPECT_B(b.dv.ndim = 3, INVALID, "dv.ndim=3 must be 4");
    EXPECT_B(b.dk.dtype = FAB_DTYPE_F16, INVALID, "dk.dtype=f16 must equal q.dtype=bf16");
    EXPECT_B(b.dout.dtype = FAB_DTYPE_F16, INVALID, "dout.dtype=f16 must equal q.dtype=bf16");
    EXPECT_B(b.dout.shape[2] = 2, INVALID, "dout.shape[2]=2 must equal q.shape[2]=4");
    EXPECT_B(b.dout.stride[3] = 2, INVALID, "dout.stride[3]=2 must be 1");
    EXPECT_B(b.dv.data = s.dk, INVALID, "dk overlaps dv");
    EXPECT_B(b.dq.data = s.dout, INVALID, "dq overlaps dout");
    EXPECT_B(b.lse.data = s.dk, INVALID, "dk overlaps lse");
    EXPECT_B(b.dq.data = s.out, INVALID, "dq overlaps out");
    EXPECT_B(b.dk.stride[0] = 0, INVALID, "dk.stride[0]=0 makes elements of dk overlap");
    EXPECT_B((b.dv.stride[1] = 64, b.dv.stride[2] = 512), INVALID, "dv.stride[2]=512 makes elements of dv overlap");
    EXPECT_B(b.lse.shape[0] = 1, INVALID, "lse.shape[0]=1 must be 2");
    EXPECT_B(b.causal = 7, INVALID, "p.causal=7");
    EXPECT_B((b.k.shape[1] = b.v.shape[1] = b.dk.shape[1] = b.dv.shape[1] = 4, b.causal = 1), INVALID, "leaves query row 0 without keys");
    EXPECT_B(b.dq.data = NULL, INVALID, "dq.data is NULL");
#undef EXPECT_B

    bad_setup_check_and_free(ctx, &s);
    fab_context_destroy(ctx);
}

/* What each backend refuses as unsupported, writing nothing: the CPU head dims
 * past 256; on CUDA f32, head dims other than 32/64/96/128/256 (forward and
 * backward), and rows that are not 16-byte aligned. */
static void test_backend_coverage(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    static bad_setup s;
    bad_setup_make(ctx, &s);
    if (fab_test_backend() == FAB_BACKEND_CUDA) {
        fab_attention_params p = s.f;
        int64_t s160[4] = {1, 1, 1, 160};
        fab_tensor_make(s.q, FAB_DTYPE_BF16, 4, s160, &p.q);
        fab_tensor_make(s.k, FAB_DTYPE_BF16, 4, s160, &p.k);
        fab_tensor_make(s.v, FAB_DTYPE_BF16, 4, s160, &p.v);
        fab_tensor_make(s.out, FAB_DTYPE_BF16, 4, s160, &p.out);
        memset(&p.lse, 0, sizeof p.lse);
        fab_test_expect_error(fab_attention_forward(ctx, &p), FAB_ERR_UNSUPPORTED, "head_dim=160 is not supported on CUDA");
        fab_attention_backward_params bq = s.b; /* the backward refuses the same head dims */
        int64_t l1[3] = {1, 1, 1};
        fab_tensor_make(s.q, FAB_DTYPE_BF16, 4, s160, &bq.q);
        fab_tensor_make(s.k, FAB_DTYPE_BF16, 4, s160, &bq.k);
        fab_tensor_make(s.v, FAB_DTYPE_BF16, 4, s160, &bq.v);
        fab_tensor_make(s.out, FAB_DTYPE_BF16, 4, s160, &bq.out);
        fab_tensor_make(s.dout, FAB_DTYPE_BF16, 4, s160, &bq.dout);
        fab_tensor_make(s.dq, FAB_DTYPE_BF16, 4, s160, &bq.dq);
        fab_tensor_make(s.dk, FAB_DTYPE_BF16, 4, s160, &bq.dk);
        fab_tensor_make(s.dv, FAB_DTYPE_BF16, 4, s160, &bq.dv);
        fab_tensor_make(s.lse, FAB_DTYPE_F32, 3, l1, &bq.lse);
        fab_test_expect_error(fab_attention_backward(ctx, &bq), FAB_ERR_UNSUPPORTED,
                              "head_dim=160 is not supported on CUDA");
        int64_t s64[4] = {1, 1, 1, 64}; /* small, so the f32 views stay inside their buffers */
        fab_tensor_make(s.q, FAB_DTYPE_F32, 4, s64, &p.q);
        fab_tensor_make(s.k, FAB_DTYPE_F32, 4, s64, &p.k);
        fab_tensor_make(s.v, FAB_DTYPE_F32, 4, s64, &p.v);
        fab_tensor_make(s.out, FAB_DTYPE_F32, 4, s64, &p.out);
        fab_test_expect_error(fab_attention_forward(ctx, &p), FAB_ERR_UNSUPPORTED, "q.dtype=f32 is not supported on CUDA");
        p = s.f;
        p.q.stride[1] -= 4, p.q.shape[2] = 3, p.out.stride[1] -= 4, p.out.shape[2] = 3; /* rows 8-byte aligned */
        p.k.shape[2] = p.v.shape[2] = 1;
        memset(&p.lse, 0, sizeof p.lse);
        fab_test_expect_error(fab_attention_forward(ctx, &p), FAB_ERR_UNSUPPORTED, "needs q.data 16-byte aligned");
    } else {
        int64_t s257[4] = {1, 1, 1, 257};
        fab_attention_params p = s.f;
        memset(&p.lse, 0, sizeof p.lse);
        fab_tensor_make(s.q, FAB_DTYPE_BF16, 4, s257, &p.q);
        fab_tensor_make(s.k, FAB_DTYPE_BF16, 4, s257, &p.k);
        fab_tensor_make(s.v, FAB_DTYPE_BF16, 4, s257, &p.v);
        fab_tensor_make(s.out, FAB_DTYPE_BF16, 4, s257, &p.out);
        fab_test_expect_error(fab_attention_forward(ctx, &p), FAB_ERR_UNSUPPORTED, "head_dim=257 is not supported on the CPU (1..256)");
    }
    bad_setup_check_and_free(ctx, &s);
    fab_context_destroy(ctx);
}

/* ------------------------------------------------ forward variants (emulator) */

#ifdef FAB_TEST_EMULATED
#include "fab_emu.h"

/* What the emulator counted since `before` */
static struct fab_emu_stats stats_since(struct fab_emu_stats before)
{
    struct fab_emu_stats after;
    fab_emu_get_stats(&after);
    after.launches -= before.launches, after.blocks -= before.blocks, after.mma -= before.mma;
    after.threads -= before.threads, after.wgmma -= before.wgmma, after.collectives -= before.collectives;
    after.barriers -= before.barriers;
    after.ldmatrix -= before.ldmatrix, after.cp_async -= before.cp_async;
    after.float_atomics -= before.float_atomics;
    after.smem_requests -= before.smem_requests, after.smem_wavefronts -= before.smem_wavefronts;
    after.smem_bank_conflicts -= before.smem_bank_conflicts;
    return after;
}

/* One bf16 forward (b = 1, one kv head) with FAB_ATTN_FWD_WARP_ROWS = rows (NULL:
 * the forward's own choice); returns what the emulator counted for it. */
static struct fab_emu_stats fwd_counts(fab_context *ctx, const char *rows, int64_t hq, int64_t sq, int64_t sk,
                                       int64_t d, int causal)
{
    const fab_dtype dt = FAB_DTYPE_BF16;
    int64_t qs[4] = {1, sq, hq, d}, ks[4] = {1, sk, 1, d};
    const int64_t nq = sq * hq * d, nk = sk * d;
    double *x = malloc(sizeof(double) * (size_t)(nq + 2 * nk));
    assert_non_null(x);
    fab_test_fill_uniform(x, nq + 2 * nk, -1, 1);
    void *q = fab_test_upload(ctx, dt, x, nq, NULL), *k = fab_test_upload(ctx, dt, x + nq, nk, NULL);
    void *v = fab_test_upload(ctx, dt, x + nq + nk, nk, NULL), *out = fab_test_alloc_poisoned(ctx, dt, nq);
    fab_attention_params f = dense_forward(dt, qs, ks, q, k, v, out);
    f.causal = causal;
    if (rows)
        setenv("FAB_ATTN_FWD_WARP_ROWS", rows, 1);
    else
        unsetenv("FAB_ATTN_FWD_WARP_ROWS");
    struct fab_emu_stats before;
    assert_int_equal(fab_synchronize(ctx), FAB_OK);
    fab_emu_get_stats(&before);
    assert_int_equal(fab_attention_forward(ctx, &f), FAB_OK);
    assert_int_equal(fab_synchronize(ctx), FAB_OK);
    struct fab_emu_stats c = stats_since(before);
    unsetenv("FAB_ATTN_FWD_WARP_ROWS");
    fab_test_free(ctx, q), fab_test_free(ctx, k), fab_test_free(ctx, v), fab_test_free(ctx, out);
    free(x);
    return c;
}

/* One bf16 backward, fast path (b = 1, one kv head per query head) with
 * FAB_ATTN_BWD_KEYS = keys (NULL: the kernel's own choice), after its forward;
 * returns what the emulator counted for the backward. */
static struct fab_emu_stats bwd_counts(fab_context *ctx, const char *keys, int64_t h, int64_t sq, int64_t sk,
                                       int64_t d, int causal)
{
    const fab_dtype dt = FAB_DTYPE_BF16;
    int64_t qs[4] = {1, sq, h, d}, ks[4] = {1, sk, h, d}, ls[3] = {1, h, sq};
    const int64_t nq = sq * h * d, nk = sk * h * d;
    double *x = malloc(sizeof(double) * (size_t)(2 * nq + 2 * nk));
    assert_non_null(x);
    fab_test_fill_uniform(x, 2 * nq + 2 * nk, -1, 1);
    void *q = fab_test_upload(ctx, dt, x, nq, NULL), *k = fab_test_upload(ctx, dt, x + nq, nk, NULL);
    void *v = fab_test_upload(ctx, dt, x + nq + nk, nk, NULL), *dout = fab_test_upload(ctx, dt, x + nq + 2 * nk, nq, NULL);
    void *out = fab_test_alloc_poisoned(ctx, dt, nq), *lse = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, h * sq);
    void *dq = fab_test_alloc_poisoned(ctx, dt, nq), *dk = fab_test_alloc_poisoned(ctx, dt, nk);
    void *dv = fab_test_alloc_poisoned(ctx, dt, nk);
    fab_attention_params f = dense_forward(dt, qs, ks, q, k, v, out);
    fab_tensor_make(lse, FAB_DTYPE_F32, 3, ls, &f.lse);
    f.causal = causal;
    assert_int_equal(fab_attention_forward(ctx, &f), FAB_OK);
    fab_attention_backward_params p;
    memset(&p, 0, sizeof p);
    p.q = f.q, p.k = f.k, p.v = f.v, p.out = f.out, p.lse = f.lse, p.causal = causal;
    fab_tensor_make(dout, dt, 4, qs, &p.dout);
    fab_tensor_make(dq, dt, 4, qs, &p.dq);
    fab_tensor_make(dk, dt, 4, ks, &p.dk);
    fab_tensor_make(dv, dt, 4, ks, &p.dv);
    if (keys)
        setenv("FAB_ATTN_BWD_KEYS", keys, 1);
    else
        unsetenv("FAB_ATTN_BWD_KEYS");
    struct fab_emu_stats before;
    assert_int_equal(fab_synchronize(ctx), FAB_OK);
    fab_emu_get_stats(&before);
    assert_int_equal(fab_attention_backward(ctx, &p), FAB_OK);
    assert_int_equal(fab_synchronize(ctx), FAB_OK);
    struct fab_emu_stats c = stats_since(before);
    unsetenv("FAB_ATTN_BWD_KEYS");
    void *bufs[9] = {q, k, v, dout, out, lse, dq, dk, dv};
    for (int i = 0; i < 9; i++)
        fab_test_free(ctx, bufs[i]);
    free(x);
    return c;
}

/* Every head dim the kernels have (the count tests and the bank test walk them). */
static const int64_t head_dims[5] = {32, 64, 96, 128, 256};
#endif

/* The Hopper forward (attention_fwd_sm90.cu) is the one an emulated H100 runs at
 * head dims 64, 96 (the 128 kernel, zero-padded), 128 and 256: 384-thread blocks of
 * 128 rows, only wgmma (per consumer warp and key tile D/16 for S and BN/16 for P V;
 * 128-key tiles, 64 at 256), and the causal mask cutting the block's key span (the
 * first block's rows see 2 of the 3 tiles of 128). Head dim 32 stays on the sm80
 * kernel (mma only). Its values are test_cases_*'s. */
static void test_sm90_forward(void **state)
{
    (void)state;
    unsetenv("FAB_ATTN_SM90");
    fab_context *ctx = fab_test_context();
#ifdef FAB_TEST_EMULATED
    if (fab_context_backend(ctx) == FAB_BACKEND_CUDA) {
        const int racecheck = fab_emu_set_racecheck(0); /* one run per launch: counts as they are */
        for (int i = 0; i < 5; i++) {
            const int64_t d = head_dims[i], kd = d == 96 ? 128 : d; /* 96 runs the 128 kernel, zero-padded */
            struct fab_emu_stats c = fwd_counts(ctx, NULL, 2, 200, 300, d, 0);
            struct fab_emu_stats causal = fwd_counts(ctx, NULL, 2, 200, 300, d, 1);
            print_message("attention forward sm90 d%lld 2 heads 200x300: %llu blocks, %llu wgmma; causal %llu wgmma\n",
                          (long long)d, c.blocks, c.wgmma, causal.wgmma);
            if (d == 32) { /* stays on the sm80 kernel (padded to 64, half the work would be zeros) */
                assert_int_equal(c.wgmma, 0);
                assert_true(c.mma > 0);
                continue;
            }
            const int64_t bn = kd > 128 ? 64 : 128, per_tile = kd / 16 + bn / 16;
            assert_int_equal(c.launches, 1);
            assert_int_equal(c.blocks, 2 * 2);
            assert_int_equal(c.threads, 2 * 2 * 384);
            assert_int_equal(c.mma, 0);
            assert_int_equal(c.wgmma, 2 * 2 * 8 * per_tile * ((300 + bn - 1) / bn)); /* 3 tiles of 128 keys, 5 of 64 */
            /* causal: the first block's rows see keys < 228, the second's all 300 */
            assert_int_equal(causal.wgmma, 2 * 8 * per_tile * ((228 + bn - 1) / bn + (300 + bn - 1) / bn));
        }
        fab_emu_set_racecheck(racecheck);
        fab_context_destroy(ctx);
        return;
    }
#endif
    fab_context_destroy(ctx);
    print_message("SKIP: counts the CUDA forward's instructions, which only the emulator does\n");
    skip();
}

/* The CUDA forward's two variants really run, as the emulator counts them: at
 * 128 x 128, 16 rows per warp takes two 64-row blocks and 32 rows one 128-row
 * block, the same mma count (the work: 16 d) and fewer ldmatrix (the point of
 * the 32-row variant); causal, the warps skip the tiles above their diagonal;
 * and left to itself the forward takes 32 rows exactly when
 * that grid still has two blocks per SM (the device's SM count, from its name). */
static void test_forward_variants(void **state)
{
    (void)state;
    setenv("FAB_ATTN_SM90", "0", 1); /* the sm80 forward's variants, also where the Hopper one would run */
    fab_context *ctx = fab_test_context();
#ifdef FAB_TEST_EMULATED
    if (fab_context_backend(ctx) == FAB_BACKEND_CUDA) {
        const int racecheck = fab_emu_set_racecheck(0); /* one run per launch: counts as they are */
        for (int64_t d = 64; d <= 128; d += 64) {
            struct fab_emu_stats c16 = fwd_counts(ctx, "16", 1, 128, 128, d, 0);
            struct fab_emu_stats c32 = fwd_counts(ctx, "32", 1, 128, 128, d, 0);
            print_message("attention forward d%lld 128x128: 16 rows/warp %llu blocks, %llu mma, %llu ldmatrix "
                          "(%.2f mma each); 32 rows/warp %llu blocks, %llu mma, %llu ldmatrix (%.2f mma each)\n",
                          (long long)d, c16.blocks, c16.mma, c16.ldmatrix, (double)c16.mma / (double)c16.ldmatrix,
                          c32.blocks, c32.mma, c32.ldmatrix, (double)c32.mma / (double)c32.ldmatrix);
            assert_int_equal(c16.launches, 1);
            assert_int_equal(c32.launches, 1);
            assert_int_equal(c16.blocks, 2);
            assert_int_equal(c32.blocks, 1);
            assert_int_equal(c16.mma, 16 * d);
            assert_int_equal(c32.mma, 16 * d);
            assert_true(c32.ldmatrix * 5 <= c16.ldmatrix * 4); /* at least a fifth fewer */
            /* causal: a warp skips the key tiles above its rows' diagonal. 16 rows
             * (64-key tiles): 4 + 8 warp-tiles of d mma. 32 rows (d 64: 64-key
             * tiles, warps 0-1 see one and 2-3 two: 6 warp-tiles of 2d mma; d 128:
             * 32-key tiles, warp w sees w + 1: 10 warp-tiles of d) */
            struct fab_emu_stats k16 = fwd_counts(ctx, "16", 1, 128, 128, d, 1);
            struct fab_emu_stats k32 = fwd_counts(ctx, "32", 1, 128, 128, d, 1);
            print_message("  causal: 16 rows/warp %llu mma, 32 rows/warp %llu mma (not causal: %lld)\n", k16.mma,
                          k32.mma, (long long)(16 * d));
            assert_int_equal(k16.mma, 12 * d);
            assert_int_equal(k32.mma, d == 64 ? 6 * 2 * d : 10 * d);
        }
        const char *name = fab_context_device_name(ctx), *p = strstr(name, " SMs");
        while (p && p > name && p[-1] >= '0' && p[-1] <= '9')
            p--;
        const int64_t sms = p ? atoll(p) : 0;
        assert_true(sms > 1);
        /* 65 rows per head: one 128-row block or two 64-row blocks */
        struct fab_emu_stats full = fwd_counts(ctx, NULL, 2 * sms, 65, 8, 32, 0);
        struct fab_emu_stats under = fwd_counts(ctx, NULL, 2 * sms - 1, 65, 8, 32, 0);
        print_message("attention forward on %lld SMs: %lld heads of 65 rows took %llu blocks, %lld heads %llu\n",
                      (long long)sms, (long long)(2 * sms), full.blocks, (long long)(2 * sms - 1), under.blocks);
        assert_int_equal(full.blocks, 2 * sms);
        assert_int_equal(under.blocks, 2 * (2 * sms - 1));
        fab_emu_set_racecheck(racecheck);
        fab_context_destroy(ctx);
        unsetenv("FAB_ATTN_SM90");
        return;
    }
#endif
    fab_context_destroy(ctx);
    unsetenv("FAB_ATTN_SM90");
    print_message("SKIP: counts the CUDA forward's instructions, which only the emulator does\n");
    skip();
}

/* The CUDA backward's two dkdv variants, 64 and 128 keys per block:
 * - on any CUDA device, deterministic, they give the same bits (each key's dK, dV
 *   sums the same query steps in the same order; a 128-key block only adds steps
 *   of exact zeros in front, for keys the step's rows cannot see);
 * - under the emulator, at 256 x 256, one head, fast path: the same mma and
 *   ldmatrix counts (the same products, read the same way), half the blocks, half
 *   the float atomics: each dQ element gets a quarter of a 16-byte red per key
 *   block, so 256 d (4 key blocks) and 128 d (2); causal, the warps skip the
 *   query rows that see none of their keys; and left to itself the kernel takes
 *   128 keys exactly when the grid still has a block per SM. */
static void test_backward_variants(void **state)
{
    (void)state;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deterministic = 1;
    fab_context *ctx = fab_test_context_with(&cfg);
    if (fab_context_backend(ctx) != FAB_BACKEND_CUDA) {
        fab_context_destroy(ctx);
        print_message("SKIP: the variants are the CUDA dkdv kernel's\n");
        skip();
    }
    setenv("FAB_ATTN_SM90", "0", 1); /* the sm80 dkdv kernel's (test_sm90_backward: the Hopper one) */
    const int64_t sl = 150, d = 64;
    size_t cap = (size_t)(2 * sl * 4 * d * 2 + 2 * sl * 2 * d * 2) * 2 + 2 * 4 * (size_t)sl * 4, n1, n2;
    unsigned char *r1 = malloc(cap), *r2 = malloc(cap);
    assert_true(r1 && r2);
    setenv("FAB_ATTN_BWD_KEYS", "64", 1);
    det_run(ctx, FAB_DTYPE_BF16, sl, d, -1, r1, &n1);
    setenv("FAB_ATTN_BWD_KEYS", "128", 1);
    det_run(ctx, FAB_DTYPE_BF16, sl, d, -1, r2, &n2);
    unsetenv("FAB_ATTN_BWD_KEYS");
    assert_int_equal(n1, cap);
    assert_int_equal(n2, cap);
    if (memcmp(r1, r2, n1) != 0)
        fail_msg("attention backward: 64 and 128 keys per dkdv block give different bits (deterministic)");
    free(r1), free(r2);
    fab_context_destroy(ctx);
#ifdef FAB_TEST_EMULATED
    ctx = fab_test_context(); /* the fast path */
    const int racecheck = fab_emu_set_racecheck(0); /* one run per launch: counts as they are */
    for (int64_t dd = 64; dd <= 128; dd += 64) {
        struct fab_emu_stats c64 = bwd_counts(ctx, "64", 1, 256, 256, dd, 0);
        struct fab_emu_stats c128 = bwd_counts(ctx, "128", 1, 256, 256, dd, 0);
        print_message("attention backward d%lld 256x256: 64 keys/block %llu blocks, %llu mma, %llu ldmatrix, %llu "
                      "cp.async, %llu float atomics; 128 keys/block %llu blocks, %llu mma, %llu ldmatrix, %llu "
                      "cp.async, %llu float atomics\n",
                      (long long)dd, c64.blocks, c64.mma, c64.ldmatrix, c64.cp_async, c64.float_atomics, c128.blocks,
                      c128.mma, c128.ldmatrix, c128.cp_async, c128.float_atomics);
        assert_int_equal(c64.launches, 3); /* D, dkdv, convert */
        assert_int_equal(c128.launches, 3);
        assert_int_equal(c64.blocks - c128.blocks, 2); /* 4 dkdv blocks against 2 */
        assert_int_equal(c64.mma, c128.mma);
        assert_int_equal(c64.ldmatrix, c128.ldmatrix);
        assert_int_equal(c64.float_atomics, 256 * dd);
        assert_int_equal(c128.float_atomics, 128 * dd);
        assert_true(c128.cp_async < c64.cp_async);
        struct fab_emu_stats k64 = bwd_counts(ctx, "64", 1, 256, 256, dd, 1);
        struct fab_emu_stats k128 = bwd_counts(ctx, "128", 1, 256, 256, dd, 1);
        print_message("  causal: 64 keys/block %llu mma, %llu float atomics; 128 keys/block %llu mma, %llu float "
                      "atomics\n",
                      k64.mma, k64.float_atomics, k128.mma, k128.float_atomics);
        /* a warp skips the 32-row halves that see none of its keys: causal keeps
         * about half the mma, and 128-key blocks stay within 5 % of 64-key ones */
        assert_true(k64.mma * 10 < c64.mma * 6);
        assert_true(k128.mma * 100 <= k64.mma * 105);
        assert_true(k128.float_atomics < k64.float_atomics);
    }
    const char *name = fab_context_device_name(ctx), *p = strstr(name, " SMs");
    while (p && p > name && p[-1] >= '0' && p[-1] <= '9')
        p--;
    const int64_t sms = p ? atoll(p) : 0;
    assert_true(sms > 1);
    /* 65 keys per head: one 128-key block or two 64-key blocks, plus the D
     * kernel's three blocks (32 rows each) and the convert kernel's three per head */
    struct fab_emu_stats full = bwd_counts(ctx, NULL, sms, 65, 65, 32, 0);
    struct fab_emu_stats under = bwd_counts(ctx, NULL, sms - 1, 65, 65, 32, 0);
    print_message("attention backward on %lld SMs: %lld heads of 65 keys took %llu blocks, %lld heads %llu\n",
                  (long long)sms, (long long)sms, full.blocks, (long long)(sms - 1), under.blocks);
    assert_int_equal(full.blocks, 7 * sms);
    assert_int_equal(under.blocks, 8 * (sms - 1));
    fab_emu_set_racecheck(racecheck);
    fab_context_destroy(ctx);
#endif
    unsetenv("FAB_ATTN_SM90");
}

/* The Hopper backward (attention_bwd_sm90.cu) is the fast path's dK/dV kernel on an
 * (emulated) H100 at head dims 64, 96 (as 128, zero-padded: D below is 128 there)
 * and 128; 32 and 256 stay on the sm80 kernels (mma only). At 256 x 256, one head, 3 launches (D,
 * dkdv, convert), 2 dkdv blocks of 384 threads and 128 keys, only wgmma there (per
 * consumer warp and (query head, 64-query tile) pair: D/16 each for S^T and dP^T, 4
 * each for dV and dK, 8 for dQ), and one 16-byte red per 4 dQ elements per key
 * block: 2 x 256 x d/4. Causal, the second key block's keys are seen by rows 128..
 * only: 4 + 2 pairs instead of 4 + 4. Deterministic mode runs it without dQ
 * (D/16 x 2 + 8 wgmma per pair, no atomics) after the Hopper dq kernel: 2 blocks of
 * 128 query rows, per consumer warp and 64-key tile D/16 x 2 for S and dP and 4 for
 * dS K; no mma anywhere. Their values are test_cases_*'s. */
static void test_sm90_backward(void **state)
{
    (void)state;
    unsetenv("FAB_ATTN_SM90");
    fab_context *ctx = fab_test_context();
#ifdef FAB_TEST_EMULATED
    if (fab_context_backend(ctx) == FAB_BACKEND_CUDA) {
        const int racecheck = fab_emu_set_racecheck(0); /* one run per launch: counts as they are */
        for (int i = 0; i < 5; i++) {
            const int64_t d = head_dims[i], kd = d == 96 ? 128 : d; /* 96 runs the 128 kernels, zero-padded */
            struct fab_emu_stats c = bwd_counts(ctx, NULL, 1, 256, 256, d, 0);
            struct fab_emu_stats causal = bwd_counts(ctx, NULL, 1, 256, 256, d, 1);
            print_message("attention backward sm90 d%lld 256x256: %llu blocks, %llu wgmma, %llu float atomics; causal "
                          "%llu wgmma, %llu float atomics\n",
                          (long long)d, c.blocks, c.wgmma, c.float_atomics, causal.wgmma, causal.float_atomics);
            if (d == 32 || d == 256) { /* the sm80 kernels */
                assert_int_equal(c.wgmma, 0);
                assert_true(c.mma > 0);
                continue;
            }
            const int64_t per_pair = 2 * (kd / 16) + 4 + 4 + 8;
            assert_int_equal(c.launches, 3);
            assert_int_equal(c.blocks, 256 / 32 + 2 + 256 * (d / 8) / 128); /* D, dkdv, convert */
            assert_int_equal(c.mma, 0);
            assert_int_equal(c.wgmma, 2 * 8 * 4 * per_pair);
            assert_int_equal(causal.wgmma, 8 * (4 + 2) * per_pair);
            assert_int_equal(c.float_atomics, 2 * 256 * d / 4);
            assert_int_equal(causal.float_atomics, (256 + 128) * d / 4);
            fab_context_config cfg;
            memset(&cfg, 0, sizeof cfg);
            cfg.deterministic = 1;
            fab_context *det = fab_test_context_with(&cfg);
            struct fab_emu_stats dc = bwd_counts(det, NULL, 1, 256, 256, d, 0);
            fab_context_destroy(det);
            print_message("  deterministic: %llu blocks, %llu wgmma, %llu mma, %llu float atomics\n", dc.blocks,
                          dc.wgmma, dc.mma, dc.float_atomics);
            assert_int_equal(dc.launches, 3); /* D, dq, dkdv */
            assert_int_equal(dc.blocks, 256 / 32 + 2 + 2);
            assert_int_equal(dc.wgmma, 2 * 8 * 4 * (2 * (kd / 16) + 4 + 4) + 2 * 8 * 4 * (2 * (kd / 16) + 4));
            assert_int_equal(dc.mma, 0);
            assert_int_equal(dc.float_atomics, 0);
        }
        fab_emu_set_racecheck(racecheck);
        fab_context_destroy(ctx);
        return;
    }
#endif
    fab_context_destroy(ctx);
    print_message("SKIP: counts the CUDA backward's instructions, which only the emulator does\n");
    skip();
}

/* The CUDA kernels' shared-memory accesses (cp.async, ldmatrix, stmatrix, and the
 * plain ones of fab__ld_shared / fab__st_shared) take no
 * more wavefronts than a conflict-free layout would, as the emulator's bank model
 * counts them (docs/EMULATOR.md), for every head dim, both forward variants, both
 * dkdv variants, and the deterministic dq kernel; 65 rows, so the edge copies run.
 * The known exception is the dkdv kernel's query-tile copies at head dim 32
 * (attn_load_rows, PAIR): 2 wavefronts per 8-lane phase, so the backward at d32
 * may take at most one extra per 8 cp.async. */
static void test_bank_conflicts(void **state)
{
    (void)state;
    setenv("FAB_ATTN_SM90", "0", 1); /* the sm80 kernels' shared memory (the Hopper one's is TMA and wgmma) */
#ifdef FAB_TEST_EMULATED
    fab_context *fast = fab_test_context();
    if (fab_context_backend(fast) == FAB_BACKEND_CUDA) {
        fab_context_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.deterministic = 1;
        fab_context *det = fab_test_context_with(&cfg);
        const int racecheck = fab_emu_set_racecheck(0); /* one run per launch */
        unsigned long long conflicts = 0, d32_extra = 0, d32_copies = 0;
        for (int i = 0; i < 5; i++) {
            const int64_t d = head_dims[i];
            static const char *what[6] = {"fwd 16 rows", "fwd 32 rows causal", "bwd 64 keys", "bwd 128 keys causal",
                                          "bwd deterministic 64 keys", "bwd deterministic 128 keys causal"};
            static const char *variant[6] = {"16", "32", "64", "128", "64", "128"};
            struct fab_emu_stats c[6];
            for (int j = 0; j < 6; j++) {
                if (j < 2)
                    c[j] = fwd_counts(fast, variant[j], 2, 65, 65, d, j & 1);
                else
                    c[j] = bwd_counts(j < 4 ? fast : det, variant[j], 2, 65, 65, d, j & 1);
                print_message("attention d%lld %s: %llu shared instructions, %llu wavefronts, %llu conflicts%s%s\n",
                              (long long)d, what[j], c[j].smem_requests, c[j].smem_wavefronts,
                              c[j].smem_bank_conflicts, c[j].smem_bank_conflicts ? "; the last: " : "",
                              c[j].smem_bank_conflicts ? fab_emu_bank_conflict_example() : "");
                assert_true(c[j].smem_requests > 0);
                if (d == 32 && j >= 2)
                    d32_extra += c[j].smem_bank_conflicts, d32_copies += c[j].cp_async;
                else
                    conflicts += c[j].smem_bank_conflicts;
            }
        }
        if (conflicts)
            fail_msg("attention: %llu bank-conflict wavefronts; the last: %s", conflicts,
                     fab_emu_bank_conflict_example());
        if (d32_extra * 8 > d32_copies)
            fail_msg("attention backward d32: %llu extra wavefronts for %llu cp.async, more than one per 8",
                     d32_extra, d32_copies);
        fab_emu_set_racecheck(racecheck);
        fab_context_destroy(det);
        fab_context_destroy(fast);
        unsetenv("FAB_ATTN_SM90");
        return;
    }
    fab_context_destroy(fast);
#endif
    unsetenv("FAB_ATTN_SM90");
    print_message("SKIP: the bank model is the emulator's\n");
    skip();
}

/* The variables the tests set to pick CUDA kernels (a failed assertion leaves a test
 * before it clears them) */
static int clear_kernel_env(void **state)
{
    (void)state;
    unsetenv("FAB_ATTN_SM90");
    unsetenv("FAB_ATTN_BWD_KEYS");
    unsetenv("FAB_ATTN_FWD_WARP_ROWS");
    return 0;
}

int main(int argc, char **argv)
{
    fab_test_init(argc, argv);
    /* every test ends with the kernel-choice variables cleared, also when it fails midway */
#define T(f) cmocka_unit_test_teardown(f, clear_kernel_env)
    const struct CMUnitTest tests[] = {
        T(test_reference_gradient),
        T(test_cases_bf16),
        T(test_cases_f16),
        T(test_cases_sm80),
        T(test_sm90_forward),
        T(test_sm90_backward),
        T(test_cases_f32),
        T(test_long),
        T(test_deterministic),
        T(test_packed_qkv),
        T(test_overlap_random),
        T(test_cpu_kv_cache),
        T(test_cpu_amx),
        T(test_fast_path),
        T(test_forward_variants),
        T(test_backward_variants),
        T(test_bank_conflicts),
        T(test_bad_arguments),
        T(test_backend_coverage),
    };
#undef T
    return fab_test_run(tests);
}
