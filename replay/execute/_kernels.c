/* Native kernels of the canonical IR (docs/protocol.md §3.7, §3.12).
 *
 * gemm: for every batch b, C_b[m, n] = the sequential FMA chain acc_0 = +0.0,
 * acc_{r+1} = fmaf(A_b[m, r], B_b[r, n], acc_r), r = 0 .. R-1, with A and B read through affine
 * (offset, stride) maps. Every output element is one float32 accumulator updated strictly in r
 * order with IEEE fusedMultiplyAdd (one rounding: vfmadd231ps, or C99 fmaf), so the result does
 * not depend on the ISA path, the register tile, the cache blocking or how the work is split
 * across threads:
 *
 * - operands are packed (BLIS style) into panels: A as [kc][MR] strips, B as [kc][NR] strips,
 *   zero-padded at the edges (padding only feeds outputs that are discarded);
 * - the micro-kernel keeps an MR x NR tile of accumulators in registers for kc terms; between
 *   k-blocks the tile is stored to C and reloaded, which is exact (a float32 stored is the
 *   float32 reloaded), so k-blocking never changes a bit;
 * - threads (OpenMP, torch's pool) own disjoint rectangles of C (or whole batches): each
 *   element is computed by exactly one thread, in exactly one order.
 *
 * ISA paths (chosen at run time, all bit-identical): "avx512" (6x32 tiles of zmm), "avx2"
 * (6x16 tiles of ymm, FMA3) and "portable" (4x16 tiles of C fmaf). TRAINPROOF_ISA=avx512|avx2|
 * portable forces one (a path the CPU lacks falls back to the next); isa() reports the path in
 * use. Worker threads run with x86 MXCSR set to round-to-nearest with FTZ and DAZ off, so
 * subnormals are kept whatever the caller's floating-point environment.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TP_X86 1
#else
#define TP_X86 0
#endif

/* Cache blocking: A blocks of MC x KC stay in L2, a B micro-panel of KC x NR in L1. MC is a
 * multiple of every path's MR (6 and 4), NC of every NR (16 and 32). */
#define KC 256
#define MC 96
#define NC 2048
#define MAX_MR 6
#define MAX_NR 32
#define MAX_THREADS 64
/* Below this many FMAs per call the work stays on the calling thread (thread start-up costs
 * more than it saves). Thread count never changes bits, only speed. */
#define PARALLEL_MIN_FMAS (1L << 17)

typedef void (*kern_fn)(long kc, const float *a, const float *b, float *c, long ldc, int load);

typedef struct {
    const char *name;
    int mr, nr;
    kern_fn kern;
} isa_t;

/* ------------------------------------------------------------------ micro-kernels */

/* Portable: plain fmaf (a libm call or an FMA instruction; correctly rounded either way). */
static void kern_portable(long kc, const float *a, const float *b, float *c, long ldc, int load) {
    float acc[4][16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 16; j++) acc[i][j] = load ? c[i * ldc + j] : 0.0f;
    for (long k = 0; k < kc; k++) {
        for (int i = 0; i < 4; i++) {
            float x = a[i];
            for (int j = 0; j < 16; j++) acc[i][j] = fmaf(x, b[j], acc[i][j]);
        }
        a += 4;
        b += 16;
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 16; j++) c[i * ldc + j] = acc[i][j];
}

#if TP_X86
/* 6 rows x 16 columns: 12 ymm accumulators; per k 2 loads of B, 6 broadcasts of A, 12 FMAs. */
__attribute__((target("avx2,fma"))) static void kern_avx2(long kc, const float *a,
                                                          const float *b, float *c, long ldc,
                                                          int load) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (load) {
        c00 = _mm256_loadu_ps(c), c01 = _mm256_loadu_ps(c + 8);
        c10 = _mm256_loadu_ps(c + ldc), c11 = _mm256_loadu_ps(c + ldc + 8);
        c20 = _mm256_loadu_ps(c + 2 * ldc), c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c + 3 * ldc), c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(c + 4 * ldc), c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(c + 5 * ldc), c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = _mm256_setzero_ps();
        c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    }
#pragma GCC unroll 4
    for (long k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), x;
        x = _mm256_broadcast_ss(a);
        c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
        a += 6;
        b += 16;
    }
    _mm256_storeu_ps(c, c00), _mm256_storeu_ps(c + 8, c01);
    _mm256_storeu_ps(c + ldc, c10), _mm256_storeu_ps(c + ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

/* 6 rows x 32 columns: 12 zmm accumulators; per k 2 loads of B, 6 broadcasts, 12 FMAs. */
__attribute__((target("avx512f,fma"))) static void kern_avx512(long kc, const float *a,
                                                               const float *b, float *c,
                                                               long ldc, int load) {
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (load) {
        c00 = _mm512_loadu_ps(c), c01 = _mm512_loadu_ps(c + 16);
        c10 = _mm512_loadu_ps(c + ldc), c11 = _mm512_loadu_ps(c + ldc + 16);
        c20 = _mm512_loadu_ps(c + 2 * ldc), c21 = _mm512_loadu_ps(c + 2 * ldc + 16);
        c30 = _mm512_loadu_ps(c + 3 * ldc), c31 = _mm512_loadu_ps(c + 3 * ldc + 16);
        c40 = _mm512_loadu_ps(c + 4 * ldc), c41 = _mm512_loadu_ps(c + 4 * ldc + 16);
        c50 = _mm512_loadu_ps(c + 5 * ldc), c51 = _mm512_loadu_ps(c + 5 * ldc + 16);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = _mm512_setzero_ps();
        c30 = c31 = c40 = c41 = c50 = c51 = _mm512_setzero_ps();
    }
#pragma GCC unroll 4
    for (long k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), x;
        x = _mm512_set1_ps(a[0]);
        c00 = _mm512_fmadd_ps(x, b0, c00), c01 = _mm512_fmadd_ps(x, b1, c01);
        x = _mm512_set1_ps(a[1]);
        c10 = _mm512_fmadd_ps(x, b0, c10), c11 = _mm512_fmadd_ps(x, b1, c11);
        x = _mm512_set1_ps(a[2]);
        c20 = _mm512_fmadd_ps(x, b0, c20), c21 = _mm512_fmadd_ps(x, b1, c21);
        x = _mm512_set1_ps(a[3]);
        c30 = _mm512_fmadd_ps(x, b0, c30), c31 = _mm512_fmadd_ps(x, b1, c31);
        x = _mm512_set1_ps(a[4]);
        c40 = _mm512_fmadd_ps(x, b0, c40), c41 = _mm512_fmadd_ps(x, b1, c41);
        x = _mm512_set1_ps(a[5]);
        c50 = _mm512_fmadd_ps(x, b0, c50), c51 = _mm512_fmadd_ps(x, b1, c51);
        a += 6;
        b += 32;
    }
    _mm512_storeu_ps(c, c00), _mm512_storeu_ps(c + 16, c01);
    _mm512_storeu_ps(c + ldc, c10), _mm512_storeu_ps(c + ldc + 16, c11);
    _mm512_storeu_ps(c + 2 * ldc, c20), _mm512_storeu_ps(c + 2 * ldc + 16, c21);
    _mm512_storeu_ps(c + 3 * ldc, c30), _mm512_storeu_ps(c + 3 * ldc + 16, c31);
    _mm512_storeu_ps(c + 4 * ldc, c40), _mm512_storeu_ps(c + 4 * ldc + 16, c41);
    _mm512_storeu_ps(c + 5 * ldc, c50), _mm512_storeu_ps(c + 5 * ldc + 16, c51);
}
#endif

static const isa_t ISA_PORTABLE = {"portable", 4, 16, kern_portable};
#if TP_X86
static const isa_t ISA_AVX2 = {"avx2", 6, 16, kern_avx2};
static const isa_t ISA_AVX512 = {"avx512", 6, 32, kern_avx512};
#endif

static const isa_t *chosen = NULL;

static void choose(void) {
    if (chosen) return;
    const char *want = getenv("TRAINPROOF_ISA");
    chosen = &ISA_PORTABLE;
#if TP_X86
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (want && strcmp(want, "portable") == 0) return;
    if (has512 && !(want && strcmp(want, "avx2") == 0))
        chosen = &ISA_AVX512;
    else if (has2)
        chosen = &ISA_AVX2;
#else
    (void)want;
#endif
}

/* ------------------------------------------------------------------ packing */

/* A[i*sm + k*sk] for i < mc, k < kc into strips of mr rows: dst[strip][k][i], zero-padded. */
static void pack_a(const float *A, long sm, long sk, long mc, long kc, int mr, float *dst) {
    for (long i0 = 0; i0 < mc; i0 += mr) {
        long rows = mc - i0 < mr ? mc - i0 : mr;
        if (rows == mr && sk == 1) {
            for (long k = 0; k < kc; k++)
                for (int i = 0; i < mr; i++) dst[k * mr + i] = A[(i0 + i) * sm + k];
        } else {
            for (long k = 0; k < kc; k++)
                for (int i = 0; i < mr; i++)
                    dst[k * mr + i] = i < rows ? A[(i0 + i) * sm + k * sk] : 0.0f;
        }
        dst += kc * mr;
    }
}

/* B[k*sk + j*sn] for k < kc, j < nc into strips of nr columns: dst[strip][k][j], zero-padded. */
static void pack_b(const float *B, long sk, long sn, long kc, long nc, int nr, float *dst) {
    for (long j0 = 0; j0 < nc; j0 += nr) {
        long cols = nc - j0 < nr ? nc - j0 : nr;
        if (sn == 1) {
            for (long k = 0; k < kc; k++) {
                memcpy(dst + k * nr, B + k * sk + j0, (size_t)cols * 4);
                for (long j = cols; j < nr; j++) dst[k * nr + j] = 0.0f;
            }
        } else {
            for (long j = 0; j < nr; j++)
                for (long k = 0; k < kc; k++)
                    dst[k * nr + j] = j < cols ? B[k * sk + (j0 + j) * sn] : 0.0f;
        }
        dst += kc * nr;
    }
}

/* ------------------------------------------------------------------ one rectangle of C */

typedef struct {
    const float *A, *B;
    float *C;
    long sam, sak, sbk, sbn, ldc; /* element strides; C rows are ldc apart */
    long K;
} operands_t;

typedef struct {
    float *a, *b;
} buffers_t;

static int buffers_alloc(buffers_t *buf, const isa_t *isa, long M, long N, long K) {
    long kc = K < KC ? K : KC;
    long mc = M < MC ? M : MC, nc = N < NC ? N : NC;
    long mcp = (mc + isa->mr - 1) / isa->mr * isa->mr, ncp = (nc + isa->nr - 1) / isa->nr * isa->nr;
    size_t abytes = ((size_t)(mcp * (kc ? kc : 1)) * 4 + 63) / 64 * 64;
    size_t bbytes = ((size_t)(ncp * (kc ? kc : 1)) * 4 + 63) / 64 * 64;
    buf->a = aligned_alloc(64, abytes);
    buf->b = aligned_alloc(64, bbytes);
    if (!buf->a || !buf->b) {
        free(buf->a);
        free(buf->b);
        return -1;
    }
    return 0;
}

static void buffers_free(buffers_t *buf) {
    free(buf->a);
    free(buf->b);
}

/* C[m0:m1, n0:n1] of one matrix product, blocked and packed. */
static void gemm_rect(const isa_t *isa, const operands_t *o, long m0, long m1, long n0, long n1,
                      buffers_t *buf) {
    const int mr = isa->mr, nr = isa->nr;
    if (o->K == 0) {
        for (long m = m0; m < m1; m++)
            for (long n = n0; n < n1; n++) o->C[m * o->ldc + n] = 0.0f;
        return;
    }
    float tile[MAX_MR * MAX_NR] __attribute__((aligned(64)));
    for (long jc = n0; jc < n1; jc += NC) {
        long nc = n1 - jc < NC ? n1 - jc : NC;
        for (long pc = 0; pc < o->K; pc += KC) {
            long kc = o->K - pc < KC ? o->K - pc : KC;
            int load = pc > 0;
            pack_b(o->B + pc * o->sbk + jc * o->sbn, o->sbk, o->sbn, kc, nc, nr, buf->b);
            for (long ic = m0; ic < m1; ic += MC) {
                long mc = m1 - ic < MC ? m1 - ic : MC;
                pack_a(o->A + ic * o->sam + pc * o->sak, o->sam, o->sak, mc, kc, mr, buf->a);
                for (long jr = 0; jr < nc; jr += nr) {
                    long cols = nc - jr < nr ? nc - jr : nr;
                    const float *bp = buf->b + (jr / nr) * kc * nr;
                    for (long ir = 0; ir < mc; ir += mr) {
                        long rows = mc - ir < mr ? mc - ir : mr;
                        const float *ap = buf->a + (ir / mr) * kc * mr;
                        float *c = o->C + (ic + ir) * o->ldc + jc + jr;
                        if (rows == mr && cols == nr) {
                            isa->kern(kc, ap, bp, c, o->ldc, load);
                            continue;
                        }
                        /* an edge tile: through a full-size scratch tile */
                        for (long i = 0; i < mr; i++)
                            for (long j = 0; j < nr; j++)
                                tile[i * nr + j] = load && i < rows && j < cols ? c[i * o->ldc + j]
                                                                                : 0.0f;
                        isa->kern(kc, ap, bp, tile, nr, load);
                        for (long i = 0; i < rows; i++)
                            memcpy(c + i * o->ldc, tile + i * nr, (size_t)cols * 4);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ threads */

typedef struct {
    const isa_t *isa;
    const float *A, *B;
    float *C;
    long M, N, K, sam, sak, sbk, sbn;
    const int64_t *offsets; /* 3 per batch: A, B, C element offsets */
    long batches;
    /* this worker's share: batches [b0, b1), and within each, rows [m0, m1) x cols [n0, n1) */
    long b0, b1, m0, m1, n0, n1;
    int failed;
} work_t;

static void run_work(work_t *w) {
#if TP_X86
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr & ~(0x8000u | 0x0040u | 0x6000u)); /* no FTZ, no DAZ, round to nearest */
#endif
    buffers_t buf;
    if (buffers_alloc(&buf, w->isa, w->m1 - w->m0, w->n1 - w->n0, w->K) != 0) {
        w->failed = 1;
    } else {
        for (long b = w->b0; b < w->b1; b++) {
            operands_t o = {w->A + w->offsets[3 * b], w->B + w->offsets[3 * b + 1],
                            w->C + w->offsets[3 * b + 2], w->sam, w->sak, w->sbk, w->sbn, w->N,
                            w->K};
            gemm_rect(w->isa, &o, w->m0, w->m1, w->n0, w->n1, &buf);
        }
        buffers_free(&buf);
    }
#if TP_X86
    _mm_setcsr(csr);
#endif
}

/* Split the work into at most `threads` disjoint shares: whole batches when there are enough,
 * otherwise bands of rows (multiples of MR), otherwise bands of columns (multiples of NR). */
static long split(const work_t *all, long threads, work_t *shares) {
    long nb = all->batches, mr = all->isa->mr, nr = all->isa->nr;
    long rowtiles = (all->M + mr - 1) / mr, coltiles = (all->N + nr - 1) / nr;
    long n = 0;
    for (long t = 0; t < threads; t++) {
        work_t w = *all;
        if (nb >= threads) {
            w.b0 = nb * t / threads, w.b1 = nb * (t + 1) / threads;
        } else if (rowtiles >= 2 * threads || rowtiles >= coltiles) {
            w.m0 = rowtiles * t / threads * mr, w.m1 = rowtiles * (t + 1) / threads * mr;
            if (w.m1 > all->M) w.m1 = all->M;
        } else {
            w.n0 = coltiles * t / threads * nr, w.n1 = coltiles * (t + 1) / threads * nr;
            if (w.n1 > all->N) w.n1 = all->N;
        }
        if (w.b0 < w.b1 && w.m0 < w.m1 && w.n0 < w.n1) shares[n++] = w;
    }
    return n;
}

static int run_all(work_t *all, long threads) {
    double fmas = (double)all->batches * all->M * all->N * (all->K ? all->K : 1);
    if (fmas < PARALLEL_MIN_FMAS) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads <= 1) {
        run_work(all);
        return all->failed;
    }
    work_t shares[MAX_THREADS];
    long n = split(all, threads, shares);
    /* OpenMP, so that the shares run on the one thread pool torch's own kernels use (torch
     * loads libgomp first; this module binds to it by soname): a second pool would fight
     * torch's spinning workers for the cores. */
#pragma omp parallel for num_threads(n) schedule(static, 1)
    for (long t = 0; t < n; t++) run_work(&shares[t]);
    int failed = 0;
    for (long t = 0; t < n; t++) failed |= shares[t].failed;
    return failed;
}

/* ------------------------------------------------------------------ Python */

static int get_floats(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) return -1;
    if (view->itemsize != 4 || (view->format && strcmp(view->format, "f") != 0)) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous float32 buffer", what);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The largest element index an operand map reaches, or -1 when it reaches none. */
static long long reach(long long off, long long rows, long long sr, long long cols, long long sc) {
    if (rows == 0 || cols == 0) return -1;
    return off + (rows - 1) * sr + (cols - 1) * sc;
}

static PyObject *py_gemm(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kw[] = {"a", "b", "out", "m", "n", "r", "a_offset", "a_strides", "b_offset",
                         "b_strides", "offsets", "threads", NULL};
    PyObject *oa, *ob, *oc, *ooff = Py_None;
    long M, N, K, aoff = 0, boff = 0, threads = 1;
    long sam = LONG_MIN, sak = LONG_MIN, sbk = LONG_MIN, sbn = LONG_MIN; /* unset: row-major */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOlll|l(ll)l(ll)Ol", kw, &oa, &ob, &oc, &M,
                                     &N, &K, &aoff, &sam, &sak, &boff, &sbk, &sbn, &ooff,
                                     &threads))
        return NULL;
    if (sam == LONG_MIN) sam = K, sak = 1;
    if (sbk == LONG_MIN) sbk = N, sbn = 1;
    if (M < 0 || N < 0 || K < 0 || aoff < 0 || boff < 0 || sam < 0 || sak < 0 || sbk < 0 ||
        sbn < 0) {
        PyErr_SetString(PyExc_ValueError, "matrix sizes, offsets and strides must be >= 0");
        return NULL;
    }
    Py_buffer va, vb, vc, voff = {0};
    int have_off = ooff != Py_None;
    if (get_floats(oa, &va, 0, "a") != 0) return NULL;
    if (get_floats(ob, &vb, 0, "b") != 0) goto fail_a;
    if (get_floats(oc, &vc, 1, "out") != 0) goto fail_b;
    if (have_off) {
        if (PyObject_GetBuffer(ooff, &voff, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) goto fail_c;
        if (voff.itemsize != 8 || voff.len % 24 != 0 ||
            (voff.format && strcmp(voff.format, "q") != 0 && strcmp(voff.format, "l") != 0)) {
            PyErr_SetString(PyExc_TypeError, "offsets must be a contiguous int64 buffer of "
                                             "(a, b, out) triples");
            goto fail_off;
        }
    }
    int64_t one[3] = {0, 0, 0};
    const int64_t *offsets = have_off ? (const int64_t *)voff.buf : one;
    long batches = have_off ? (long)(voff.len / 24) : 1;
    long long alen = va.len / 4, blen = vb.len / 4, clen = vc.len / 4;
    for (long b = 0; b < batches; b++) {
        long long ea = offsets[3 * b], eb = offsets[3 * b + 1], ec = offsets[3 * b + 2];
        long long ra = reach(aoff + ea, M, sam, K, sak), rb = reach(boff + eb, K, sbk, N, sbn);
        long long rc = reach(ec, M, N, N, 1);
        if (ea < 0 || eb < 0 || ec < 0 || ra >= alen || rb >= blen || rc >= clen) {
            PyErr_Format(PyExc_ValueError,
                         "batch %ld reaches past its buffers (a %lld/%lld, b %lld/%lld, out "
                         "%lld/%lld): expected element counts too small",
                         b, ra + 1, alen, rb + 1, blen, rc + 1, clen);
            goto fail_off;
        }
    }
    choose();
    work_t all = {chosen, (const float *)va.buf + aoff, (const float *)vb.buf + boff, vc.buf,
                  M, N, K, sam, sak, sbk, sbn, offsets, batches, 0, batches, 0, M, 0, N, 0};
    int failed;
    Py_BEGIN_ALLOW_THREADS;
    failed = run_all(&all, threads);
    Py_END_ALLOW_THREADS;
    if (have_off) PyBuffer_Release(&voff);
    PyBuffer_Release(&vc);
    PyBuffer_Release(&vb);
    PyBuffer_Release(&va);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
fail_off:
    if (have_off) PyBuffer_Release(&voff);
fail_c:
    PyBuffer_Release(&vc);
fail_b:
    PyBuffer_Release(&vb);
fail_a:
    PyBuffer_Release(&va);
    return NULL;
}

/* ------------------------------------------------------------------ element ops (Python) */

/* Element ops whose torch form takes several kernels (docs/protocol.md §3.3), in one pass:
 * every element is computed alone, with the same single rounding as the reference, so
 * vectorisation and threads change nothing. Operands are n elements or 1 (broadcast). */
enum { EW_SQRT = 0, EW_MAX = 1, EW_MIN = 2, EW_LDEXP = 3, EW_FMA = 4 };
#define LDEXP_CLAMP 300 /* replay/execute/semantics.py: LDEXP_CLAMP */

static inline uint32_t f2u(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

#define OPND(p, k, i) ((k) ? (p)[i] : (p)[0])
#define QNAN_BITS 0x7FC00000u

/* Each element op is written branch-free so the compiler vectorises it, and defined twice:
 * for the baseline ISA and for AVX2 (chosen with the matmul path). Element results do not
 * depend on vector width, only speed does. */
#define EW_KERNELS(SUFFIX, ATTR)                                                            \
    ATTR static void ew_sqrt##SUFFIX(float *o, const float *a, long ka, long n) {           \
        for (long i = 0; i < n; i++) o[i] = sqrtf(OPND(a, ka, i)); /* correctly rounded */ \
    }                                                                                       \
    ATTR static void ew_max##SUFFIX(float *o, const float *a, long ka, const float *b,      \
                                    long kb, long n) {                                      \
        for (long i = 0; i < n; i++) {                                                      \
            float x = OPND(a, ka, i), y = OPND(b, kb, i);                                   \
            uint32_t r = f2u(x > y ? x : y);                                                \
            r = x == y ? (f2u(x) & f2u(y)) : r; /* max(-0, +0) = +0 */                      \
            o[i] = u2f(x != x || y != y ? QNAN_BITS : r);                                   \
        }                                                                                   \
    }                                                                                       \
    ATTR static void ew_min##SUFFIX(float *o, const float *a, long ka, const float *b,      \
                                    long kb, long n) {                                      \
        for (long i = 0; i < n; i++) {                                                      \
            float x = OPND(a, ka, i), y = OPND(b, kb, i);                                   \
            uint32_t r = f2u(x < y ? x : y);                                                \
            r = x == y ? (f2u(x) | f2u(y)) : r; /* min(-0, +0) = -0 */                      \
            o[i] = u2f(x != x || y != y ? QNAN_BITS : r);                                   \
        }                                                                                   \
    }                                                                                       \
    /* x * 2^n for integral n: exact in double for |k| <= 300, then one rounding to float; \
     * every float with |n| >= 2^23 is integral, below that (float)(int)n == n decides. */  \
    ATTR static void ew_ldexp_scalar##SUFFIX(float *o, const float *a, long ka,             \
                                             const float *b, long kb, long n) {             \
        for (long i = 0; i < n; i++) {                                                      \
            float x = OPND(a, ka, i), e = OPND(b, kb, i);                                   \
            float mag = fabsf(e);                                                           \
            int big = mag >= 8388608.0f, finite = mag <= 3.4028234663852886e38f;            \
            float small = big ? 0.0f : e;                                                   \
            int valid = finite && (big || (float)(int32_t)small == small);                  \
            float c = valid ? e : 0.0f;                                                     \
            c = c > LDEXP_CLAMP ? LDEXP_CLAMP : c < -LDEXP_CLAMP ? -LDEXP_CLAMP : c;        \
            int64_t pb = ((int64_t)(int32_t)c + 1023) << 52;                                \
            double p;                                                                       \
            memcpy(&p, &pb, 8);                                                             \
            float r = (float)((double)x * p);                                               \
            o[i] = valid ? r : u2f(QNAN_BITS);                                              \
        }                                                                                   \
    }

EW_KERNELS(_base, )
#define ew_ldexp_base ew_ldexp_scalar_base
#if TP_X86
EW_KERNELS(_avx2, __attribute__((target("avx2"))))

/* LDEXP eight at a time: the same steps as ew_ldexp_scalar (validity, clamp, 2^k built from
 * double exponent bits, the exact double product, one rounding to float). */
__attribute__((target("avx2"))) static void ew_ldexp_avx2(float *o, const float *a, long ka,
                                                          const float *b, long kb, long n) {
    long i = 0;
    if (ka && kb) {
        const __m256 sign = _mm256_set1_ps(-0.0f), two23 = _mm256_set1_ps(8388608.0f);
        const __m256 fmax = _mm256_set1_ps(3.4028234663852886e38f), zero = _mm256_setzero_ps();
        const __m256 lo = _mm256_set1_ps(-LDEXP_CLAMP), hi = _mm256_set1_ps(LDEXP_CLAMP);
        const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32((int)QNAN_BITS));
        const __m256i bias = _mm256_set1_epi64x(1023);
        for (; i + 8 <= n; i += 8) {
            __m256 x = _mm256_loadu_ps(a + i), e = _mm256_loadu_ps(b + i);
            __m256 mag = _mm256_andnot_ps(sign, e);
            __m256 finite = _mm256_cmp_ps(mag, fmax, _CMP_LE_OQ);
            __m256 big = _mm256_cmp_ps(mag, two23, _CMP_GE_OQ);
            __m256 small = _mm256_blendv_ps(e, zero, big);
            __m256 back = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(small));
            __m256 integral = _mm256_or_ps(big, _mm256_cmp_ps(back, small, _CMP_EQ_OQ));
            __m256 valid = _mm256_and_ps(finite, integral);
            __m256 c = _mm256_and_ps(valid, e); /* 0 where invalid */
            c = _mm256_min_ps(_mm256_max_ps(c, lo), hi);
            __m256i k = _mm256_cvttps_epi32(c);
            __m256i k0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(k));
            __m256i k1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(k, 1));
            __m256d p0 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(k0, bias), 52));
            __m256d p1 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(k1, bias), 52));
            __m256d x0 = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
            __m256d x1 = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
            __m128 r0 = _mm256_cvtpd_ps(_mm256_mul_pd(x0, p0));
            __m128 r1 = _mm256_cvtpd_ps(_mm256_mul_pd(x1, p1));
            __m256 r = _mm256_insertf128_ps(_mm256_castps128_ps256(r0), r1, 1);
            _mm256_storeu_ps(o + i, _mm256_blendv_ps(nan, r, valid));
        }
    }
    ew_ldexp_scalar_avx2(o + i, ka ? a + i : a, ka, kb ? b + i : b, kb, n - i);
}
#endif

static void ew_fma_portable(float *o, const float *a, long ka, const float *b, long kb,
                            const float *c, long kc, long n) {
    for (long i = 0; i < n; i++) o[i] = fmaf(OPND(a, ka, i), OPND(b, kb, i), OPND(c, kc, i));
}

#if TP_X86
__attribute__((target("avx2,fma"))) static void ew_fma_hw(float *o, const float *a, long ka,
                                                          const float *b, long kb,
                                                          const float *c, long kc, long n) {
    for (long i = 0; i < n; i++) o[i] = fmaf(OPND(a, ka, i), OPND(b, kb, i), OPND(c, kc, i));
}
#endif

typedef struct {
    int code;
    float *out;
    long n, p;             /* n elements, in rows of p (the last may be shorter) */
    const float *in[3];
    long numel[3];         /* n (full), p (one row, repeated: a trailing broadcast) or 1 */
} ew_t;

static void ew_rows(const ew_t *e, long r0, long r1) {
    for (long r = r0; r < r1; r++) {
        long lo = r * e->p, len = e->n - lo < e->p ? e->n - lo : e->p;
        const float *x[3] = {NULL, NULL, NULL};
        long k[3] = {0, 0, 0};
        for (int q = 0; q < 3; q++) {
            if (!e->in[q]) continue;
            long m = e->numel[q];
            x[q] = e->in[q] + (m == e->n && m != 1 ? lo : 0);
            k[q] = m != 1;
        }
        float *o = e->out + lo;
#if TP_X86
        if (chosen != &ISA_PORTABLE) {
            switch (e->code) {
                case EW_SQRT: ew_sqrt_avx2(o, x[0], k[0], len); break;
                case EW_MAX: ew_max_avx2(o, x[0], k[0], x[1], k[1], len); break;
                case EW_MIN: ew_min_avx2(o, x[0], k[0], x[1], k[1], len); break;
                case EW_LDEXP: ew_ldexp_avx2(o, x[0], k[0], x[1], k[1], len); break;
                default: ew_fma_hw(o, x[0], k[0], x[1], k[1], x[2], k[2], len);
            }
            continue;
        }
#endif
        switch (e->code) {
            case EW_SQRT: ew_sqrt_base(o, x[0], k[0], len); break;
            case EW_MAX: ew_max_base(o, x[0], k[0], x[1], k[1], len); break;
            case EW_MIN: ew_min_base(o, x[0], k[0], x[1], k[1], len); break;
            case EW_LDEXP: ew_ldexp_base(o, x[0], k[0], x[1], k[1], len); break;
            default: ew_fma_portable(o, x[0], k[0], x[1], k[1], x[2], k[2], len);
        }
    }
}

#define EW_PARALLEL_MIN (1L << 16)

static PyObject *py_elementwise(PyObject *self, PyObject *args) {
    (void)self;
    int code;
    long threads = 1;
    PyObject *oo, *ops;
    if (!PyArg_ParseTuple(args, "iOO!|l", &code, &oo, &PyTuple_Type, &ops, &threads)) return NULL;
    int arity = code == EW_SQRT ? 1 : code == EW_FMA ? 3 : 2;
    if (code < 0 || code > EW_FMA || PyTuple_GET_SIZE(ops) != arity) {
        PyErr_Format(PyExc_ValueError, "element op %d takes %d operands", code, arity);
        return NULL;
    }
    Py_buffer vo, vin[3];
    int got = 0;
    if (get_floats(oo, &vo, 1, "out") != 0) return NULL;
    long n = (long)(vo.len / 4), p = 0;
    ew_t e = {code, vo.buf, n, 0, {NULL, NULL, NULL}, {0, 0, 0}};
    for (; got < arity; got++) {
        if (get_floats(PyTuple_GET_ITEM(ops, got), &vin[got], 0, "operand") != 0) goto fail;
        long len = (long)(vin[got].len / 4);
        if (len != n && len != 1) {
            if (p == 0 && len > 0 && n % len == 0) p = len;
            if (len != p) {
                PyErr_Format(PyExc_ValueError,
                             "operand %d has %ld elements; expected %ld, 1 or one row", got, len,
                             n);
                PyBuffer_Release(&vin[got]);
                goto fail;
            }
        }
        e.in[got] = vin[got].buf;
        e.numel[got] = len;
    }
    e.p = p ? p : 4096;
    long rows = e.p ? (n + e.p - 1) / e.p : 0;
    choose();
    Py_BEGIN_ALLOW_THREADS;
#if TP_X86
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr & ~(0x8000u | 0x0040u | 0x6000u));
#endif
    if (threads <= 1 || n < EW_PARALLEL_MIN || rows < 2) {
        ew_rows(&e, 0, rows);
    } else {
        if (threads > MAX_THREADS) threads = MAX_THREADS;
        if (threads > rows) threads = rows;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (long t = 0; t < threads; t++) {
#if TP_X86
            _mm_setcsr(_mm_getcsr() & ~(0x8000u | 0x0040u | 0x6000u));
#endif
            ew_rows(&e, rows * t / threads, rows * (t + 1) / threads);
        }
    }
#if TP_X86
    _mm_setcsr(csr);
#endif
    Py_END_ALLOW_THREADS;
    for (int k = 0; k < got; k++) PyBuffer_Release(&vin[k]);
    PyBuffer_Release(&vo);
    Py_RETURN_NONE;
fail:
    for (int k = 0; k < got; k++) PyBuffer_Release(&vin[k]);
    PyBuffer_Release(&vo);
    return NULL;
}

/* ------------------------------------------------------------------ gather, reduce_sum */

/* An operand's affine map over an output of rank <= 4 (shapes padded with leading 1s). */
typedef struct {
    long off, st[4], rho;
} map4_t;

static long long map_reach(const map4_t *m, const long *shape, long rows) {
    long long r = m->off;
    for (int k = 0; k < 4; k++) {
        if (shape[k] == 0) return -1;
        r += (long long)(shape[k] - 1) * m->st[k];
    }
    if (rows == 0) return -1;
    return r + (long long)(rows - 1) * m->rho;
}

static int parse_map(PyObject *t, map4_t *m, const char *what) {
    m->rho = 0;
    if (!PyArg_ParseTuple(t, "l(llll)|l", &m->off, &m->st[0], &m->st[1], &m->st[2], &m->st[3],
                          &m->rho))
        return -1;
    if (m->off < 0 || m->st[0] < 0 || m->st[1] < 0 || m->st[2] < 0 || m->st[3] < 0 ||
        m->rho < 0) {
        PyErr_Format(PyExc_ValueError, "%s map: offsets and strides must be >= 0", what);
        return -1;
    }
    return 0;
}

/* GATHER (docs/protocol.md §3.4.1): the index selects row v iff finite, integral, 0 <= v < R;
 * the element is then the table at its map plus v*rho, else +0.0. Each element alone. */
static void gather_rows(float *out, const float *ix, const float *tab, const long *d,
                        const map4_t *mi, const map4_t *mt, long rows, long q0, long q1) {
    for (long q = q0; q < q1; q++) { /* q: the flat index of (i0, i1, i2) */
        long i2 = q % d[2], i1 = q / d[2] % d[1], i0 = q / d[2] / d[1];
        long bi = mi->off + i0 * mi->st[0] + i1 * mi->st[1] + i2 * mi->st[2];
        long bt = mt->off + i0 * mt->st[0] + i1 * mt->st[1] + i2 * mt->st[2];
        float *o = out + q * d[3];
        for (long j = 0; j < d[3]; j++) {
            double x = ix[bi + j * mi->st[3]];
            if (x >= 0 && x < (double)rows && floor(x) == x)
                o[j] = tab[bt + j * mt->st[3] + (long)x * mt->rho];
            else
                o[j] = 0.0f;
        }
    }
}

/* IEEE 754-2019 maximum (NaN-propagating, max(-0, +0) = +0), as ew_max. */
static inline float max754(float x, float y) {
    uint32_t r = f2u(x > y ? x : y);
    r = x == y ? (f2u(x) & f2u(y)) : r;
    return u2f(x != x || y != y ? QNAN_BITS : r);
}

/* REDUCE_SUM (acc_0 = +0.0, acc_{r+1} = acc_r + x_r) or REDUCE_MAX (acc_0 = -inf,
 * acc_{r+1} = maximum(acc_r, x_r)), strictly in r; eight outputs' chains at a time
 * (independent, so they overlap in the pipeline). */
#define FOLD_ROWS(NAME, INIT, STEP)                                                         \
    static void NAME(float *out, const float *x, const long *d, const map4_t *m, long rows,  \
                     long q0, long q1) {                                                    \
        for (long q = q0; q < q1; q++) {                                                    \
            long i2 = q % d[2], i1 = q / d[2] % d[1], i0 = q / d[2] / d[1];                 \
            const float *base = x + m->off + i0 * m->st[0] + i1 * m->st[1] + i2 * m->st[2]; \
            long s3 = m->st[3], rho = m->rho;                                               \
            float *o = out + q * d[3];                                                      \
            long j0 = 0;                                                                    \
            for (; j0 + 8 <= d[3]; j0 += 8) {                                               \
                float acc[8] = {INIT, INIT, INIT, INIT, INIT, INIT, INIT, INIT};            \
                const float *b = base + j0 * s3;                                            \
                if (s3 == 1) {                                                              \
                    for (long r = 0; r < rows; r++)                                         \
                        for (int t = 0; t < 8; t++) acc[t] = STEP(acc[t], b[r * rho + t]);  \
                } else {                                                                    \
                    for (long r = 0; r < rows; r++)                                         \
                        for (int t = 0; t < 8; t++)                                         \
                            acc[t] = STEP(acc[t], b[r * rho + t * s3]);                     \
                }                                                                           \
                memcpy(o + j0, acc, sizeof acc);                                            \
            }                                                                               \
            for (; j0 < d[3]; j0++) {                                                       \
                float acc = INIT;                                                           \
                for (long r = 0; r < rows; r++) acc = STEP(acc, base[j0 * s3 + r * rho]);   \
                o[j0] = acc;                                                                \
            }                                                                               \
        }                                                                                   \
    }

#define ADD_STEP(a, x) ((a) + (x))
FOLD_ROWS(sum_rows, 0.0f, ADD_STEP)
FOLD_ROWS(max_rows, -INFINITY, max754)

/* mode: 0 REDUCE_SUM, 1 GATHER, 2 REDUCE_MAX */
static PyObject *py_gather_or_sum(PyObject *args, int mode) {
    int gather = mode == 1;
    PyObject *oo, *ox, *ot = NULL, *mx, *mtab = NULL;
    long d[4], rows, threads = 1;
    map4_t m1, m2;
    Py_buffer vo, vx, vt;
    if (gather) {
        if (!PyArg_ParseTuple(args, "OOO(llll)OOl|l", &oo, &ox, &ot, &d[0], &d[1], &d[2], &d[3],
                              &mx, &mtab, &rows, &threads))
            return NULL;
    } else if (!PyArg_ParseTuple(args, "OO(llll)Ol|l", &oo, &ox, &d[0], &d[1], &d[2], &d[3], &mx,
                                 &rows, &threads)) {
        return NULL;
    }
    if (parse_map(mx, &m1, gather ? "index" : "operand") != 0) return NULL;
    if (gather && parse_map(mtab, &m2, "table") != 0) return NULL;
    if (d[0] < 0 || d[1] < 0 || d[2] < 0 || d[3] < 0 || rows < 0) {
        PyErr_SetString(PyExc_ValueError, "shape and row count must be >= 0");
        return NULL;
    }
    if (get_floats(oo, &vo, 1, "out") != 0) return NULL;
    if (get_floats(ox, &vx, 0, gather ? "index" : "operand") != 0) {
        PyBuffer_Release(&vo);
        return NULL;
    }
    if (gather && get_floats(ot, &vt, 0, "table") != 0) {
        PyBuffer_Release(&vx);
        PyBuffer_Release(&vo);
        return NULL;
    }
    long long numel = (long long)d[0] * d[1] * d[2] * d[3];
    long long rx = map_reach(&m1, d, gather ? 1 : rows);
    long long rt = gather ? map_reach(&m2, d, rows) : -1;
    if (numel * 4 != vo.len || rx >= vx.len / 4 || (gather && rt >= vt.len / 4)) {
        PyErr_Format(PyExc_ValueError,
                     "maps reach past their buffers (out %lld/%zd, %s %lld/%zd%s): expected "
                     "larger operands",
                     numel, vo.len / 4, gather ? "index" : "operand", rx + 1, vx.len / 4,
                     gather ? ", table too" : "");
        if (gather) PyBuffer_Release(&vt);
        PyBuffer_Release(&vx);
        PyBuffer_Release(&vo);
        return NULL;
    }
    long outer = d[0] * d[1] * d[2];
    float *out = vo.buf;
    const float *x = vx.buf, *tab = gather ? vt.buf : NULL;
    if ((double)numel * (rows ? rows : 1) < EW_PARALLEL_MIN) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > outer) threads = outer > 0 ? outer : 1;
    Py_BEGIN_ALLOW_THREADS;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (long t = 0; t < threads; t++) {
        long q0 = outer * t / threads, q1 = outer * (t + 1) / threads;
        if (gather)
            gather_rows(out, x, tab, d, &m1, &m2, rows, q0, q1);
        else if (mode == 2)
            max_rows(out, x, d, &m1, rows, q0, q1);
        else
            sum_rows(out, x, d, &m1, rows, q0, q1);
    }
    Py_END_ALLOW_THREADS;
    if (gather) PyBuffer_Release(&vt);
    PyBuffer_Release(&vx);
    PyBuffer_Release(&vo);
    Py_RETURN_NONE;
}

static PyObject *py_gather(PyObject *self, PyObject *args) {
    (void)self;
    return py_gather_or_sum(args, 1);
}

static PyObject *py_reduce_sum(PyObject *self, PyObject *args) {
    (void)self;
    return py_gather_or_sum(args, 0);
}

static PyObject *py_reduce_max(PyObject *self, PyObject *args) {
    (void)self;
    return py_gather_or_sum(args, 2);
}

/* ------------------------------------------------------------------ element chains */

/* A chain of element ops over one output size n, run block by block: each op's block result
 * stays in a per-thread scratch buffer (L1/L2) unless the slot it writes is live after the
 * chain, in which case it is computed straight into that output tensor. Only the memory
 * traffic is fused: every op still rounds once, exactly as alone (docs/protocol.md §3.3), and
 * every element is computed by one thread, so blocks and threads change no bit.
 *
 * Opcodes are the IR's own numbers (protocol/ir.py, Opcode). An op's operand ref r >= 0 is
 * chain input r (n elements, 1 broadcast element, or a row of p repeated), r < 0 is the
 * result of chain op -r-1. */
enum {
    OP_ADD = 0x01, OP_SUB = 0x02, OP_MUL = 0x03, OP_DIV = 0x04, OP_MAX = 0x05, OP_MIN = 0x06,
    OP_GT = 0x07, OP_GE = 0x08, OP_EQ = 0x09, OP_LDEXP = 0x0A, OP_NEG = 0x10, OP_ABS = 0x11,
    OP_SQRT = 0x12, OP_ROUND = 0x13, OP_COPY = 0x16, OP_SELECT = 0x20, OP_FMA = 0x21
};
#define CHAIN_BLOCK 1024
#define CHAIN_MAX_OPS 256
#define CHAIN_MAX_INPUTS 256

#define CHAIN_APPLY(SUFFIX, ATTR)                                                           \
    ATTR static void chain_apply##SUFFIX(int code, float *o, const float *a, const float *b, \
                                         const float *c, long n) {                          \
        switch (code) {                                                                     \
            case OP_ADD: for (long i = 0; i < n; i++) o[i] = a[i] + b[i]; break;             \
            case OP_SUB: for (long i = 0; i < n; i++) o[i] = a[i] - b[i]; break;             \
            case OP_MUL: for (long i = 0; i < n; i++) o[i] = a[i] * b[i]; break;             \
            case OP_DIV: for (long i = 0; i < n; i++) o[i] = a[i] / b[i]; break;             \
            case OP_GT: for (long i = 0; i < n; i++) o[i] = a[i] > b[i] ? 1.0f : 0.0f; break; \
            case OP_GE: for (long i = 0; i < n; i++) o[i] = a[i] >= b[i] ? 1.0f : 0.0f; break; \
            case OP_EQ: for (long i = 0; i < n; i++) o[i] = a[i] == b[i] ? 1.0f : 0.0f; break; \
            case OP_NEG: for (long i = 0; i < n; i++) o[i] = -a[i]; break;                   \
            case OP_ABS: for (long i = 0; i < n; i++) o[i] = fabsf(a[i]); break;             \
            case OP_SQRT: for (long i = 0; i < n; i++) o[i] = sqrtf(a[i]); break;            \
            case OP_ROUND: for (long i = 0; i < n; i++) o[i] = rintf(a[i]); break;           \
            case OP_COPY: memcpy(o, a, (size_t)n * 4); break;                               \
            case OP_SELECT:                                                                 \
                for (long i = 0; i < n; i++) o[i] = a[i] != 0.0f ? b[i] : c[i];             \
                break;                                                                      \
            case OP_MAX: ew_max##SUFFIX(o, a, 1, b, 1, n); break;                           \
            case OP_MIN: ew_min##SUFFIX(o, a, 1, b, 1, n); break;                           \
            case OP_LDEXP: ew_ldexp##SUFFIX(o, a, 1, b, 1, n); break;                       \
            default: break; /* OP_FMA: by the caller (needs the FMA path) */                \
        }                                                                                   \
    }

CHAIN_APPLY(_base, )
#if TP_X86
CHAIN_APPLY(_avx2, __attribute__((target("avx2"))))
#endif

typedef struct {
    int code, ref[3], mat;
} chain_op_t;

typedef struct {
    long n, nops, nin;
    const chain_op_t *ops;
    long d[4];                       /* the output shape, padded to rank 4 */
    const float *in[CHAIN_MAX_INPUTS];
    map4_t map[CHAIN_MAX_INPUTS];    /* each input's affine map over the output */
    int full[CHAIN_MAX_INPUTS];      /* 1: the map is the output's own contiguous layout */
    float **out;
    int fast;
} chain_t;

/* buf[t] = in[map(lo + t)] for t < len: an odometer over the output's index, copying runs
 * of the innermost dimension (memcpy when contiguous, a fill when broadcast). */
static void fill_mapped(float *buf, const float *in, const map4_t *m, const long *d, long lo,
                        long len) {
    long i3 = lo % d[3], q = lo / d[3];
    long i2 = q % d[2], i1 = q / d[2] % d[1], i0 = q / d[2] / d[1];
    long t = 0;
    while (t < len) {
        long run = d[3] - i3 < len - t ? d[3] - i3 : len - t;
        const float *src = in + m->off + i0 * m->st[0] + i1 * m->st[1] + i2 * m->st[2] +
                           i3 * m->st[3];
        if (m->st[3] == 1) {
            memcpy(buf + t, src, (size_t)run * 4);
        } else if (m->st[3] == 0) {
            for (long k = 0; k < run; k++) buf[t + k] = src[0];
        } else {
            for (long k = 0; k < run; k++) buf[t + k] = src[k * m->st[3]];
        }
        t += run;
        i3 = 0;
        if (++i2 == d[2]) {
            i2 = 0;
            if (++i1 == d[1]) i1 = 0, i0++;
        }
    }
}

static void chain_blocks(const chain_t *c, long b0, long b1, float *scratch) {
    float *in_buf = scratch;                         /* CHAIN_BLOCK per non-full input */
    float *op_buf = scratch + c->nin * CHAIN_BLOCK;  /* CHAIN_BLOCK per op */
    const float *inp[CHAIN_MAX_INPUTS];
    const float *res[CHAIN_MAX_OPS];
    int constant[CHAIN_MAX_INPUTS]; /* one broadcast element: its block is filled once */
    for (long q = 0; q < c->nin; q++) {
        const map4_t *m = &c->map[q];
        constant[q] = !c->full[q] && !m->st[0] && !m->st[1] && !m->st[2] && !m->st[3];
        if (constant[q]) {
            float *buf = in_buf + q * CHAIN_BLOCK;
            for (long i = 0; i < CHAIN_BLOCK; i++) buf[i] = c->in[q][m->off];
            inp[q] = buf;
        }
    }
    for (long blk = b0; blk < b1; blk++) {
        long lo = blk * CHAIN_BLOCK, len = c->n - lo < CHAIN_BLOCK ? c->n - lo : CHAIN_BLOCK;
        for (long q = 0; q < c->nin; q++) {
            if (constant[q]) continue;
            if (c->full[q]) {
                inp[q] = c->in[q] + lo;
            } else {
                fill_mapped(in_buf + q * CHAIN_BLOCK, c->in[q], &c->map[q], c->d, lo, len);
                inp[q] = in_buf + q * CHAIN_BLOCK;
            }
        }
        for (long k = 0; k < c->nops; k++) {
            const chain_op_t *op = &c->ops[k];
            float *o = op->mat >= 0 ? c->out[op->mat] + lo : op_buf + k * CHAIN_BLOCK;
            const float *x[3] = {NULL, NULL, NULL};
            for (int r = 0; r < 3; r++)
                if (op->ref[r] != INT_MIN) x[r] = op->ref[r] >= 0 ? inp[op->ref[r]] : res[-op->ref[r] - 1];
            if (op->code == OP_FMA) {
#if TP_X86
                if (c->fast)
                    ew_fma_hw(o, x[0], 1, x[1], 1, x[2], 1, len);
                else
#endif
                    ew_fma_portable(o, x[0], 1, x[1], 1, x[2], 1, len);
            } else {
#if TP_X86
                if (c->fast)
                    chain_apply_avx2(op->code, o, x[0], x[1], x[2], len);
                else
#endif
                    chain_apply_base(op->code, o, x[0], x[1], x[2], len);
            }
            res[k] = o;
        }
    }
}

static const int CHAIN_ARITY[0x22] = {
    [OP_ADD] = 2, [OP_SUB] = 2, [OP_MUL] = 2, [OP_DIV] = 2, [OP_MAX] = 2, [OP_MIN] = 2,
    [OP_GT] = 2, [OP_GE] = 2, [OP_EQ] = 2, [OP_LDEXP] = 2, [OP_NEG] = 1, [OP_ABS] = 1,
    [OP_SQRT] = 1, [OP_ROUND] = 1, [OP_COPY] = 1, [OP_SELECT] = 3, [OP_FMA] = 3,
};

static PyObject *py_chain(PyObject *self, PyObject *args) {
    (void)self;
    long d[4], threads = 1;
    PyObject *ospec, *oins, *omaps, *oouts;
    if (!PyArg_ParseTuple(args, "(llll)OO!O!O!|l", &d[0], &d[1], &d[2], &d[3], &ospec,
                          &PyTuple_Type, &oins, &PyTuple_Type, &omaps, &PyTuple_Type, &oouts,
                          &threads))
        return NULL;
    if (d[0] < 0 || d[1] < 0 || d[2] < 0 || d[3] < 0) {
        PyErr_SetString(PyExc_ValueError, "chain: the shape must be >= 0");
        return NULL;
    }
    long n = d[0] * d[1] * d[2] * d[3];
    if (PyTuple_GET_SIZE(omaps) != PyTuple_GET_SIZE(oins)) {
        PyErr_SetString(PyExc_ValueError, "chain: one map per input");
        return NULL;
    }
    Py_buffer vspec;
    if (PyObject_GetBuffer(ospec, &vspec, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return NULL;
    long nops = (long)(vspec.len / (5 * 4)), nin = PyTuple_GET_SIZE(oins);
    long nout = PyTuple_GET_SIZE(oouts);
    if (vspec.itemsize != 4 || vspec.len % 20 || nops < 1 || nops > CHAIN_MAX_OPS ||
        nin > CHAIN_MAX_INPUTS || nout > CHAIN_MAX_OPS || n < 0) {
        PyBuffer_Release(&vspec);
        PyErr_SetString(PyExc_ValueError, "chain: spec must be int32 (code, 3 refs, out) rows; "
                                          "at most 256 ops and 256 inputs");
        return NULL;
    }
    const int32_t *raw = vspec.buf;
    chain_op_t ops[CHAIN_MAX_OPS];
    for (long k = 0; k < nops; k++) {
        int code = raw[5 * k];
        int arity = code >= 0 && code < 0x22 ? CHAIN_ARITY[code] : 0;
        ops[k].code = code;
        ops[k].mat = raw[5 * k + 4];
        if (!arity || ops[k].mat < -1 || ops[k].mat >= nout) goto bad_spec;
        for (int r = 0; r < 3; r++) {
            int ref = raw[5 * k + 1 + r];
            if (r >= arity) {
                ops[k].ref[r] = INT_MIN;
                continue;
            }
            if (ref >= nin || (ref < 0 && -ref - 1 >= k)) goto bad_spec;
            ops[k].ref[r] = ref;
        }
    }
    PyBuffer_Release(&vspec);
    chain_t c = {n, nops, nin, ops, {d[0], d[1], d[2], d[3]}, {NULL}, {{0}}, {0}, NULL, 0};
    Py_buffer vin[CHAIN_MAX_INPUTS], vout[CHAIN_MAX_OPS];
    float *outp[CHAIN_MAX_OPS];
    long got_in = 0, got_out = 0;
    for (; got_in < nin; got_in++) {
        if (get_floats(PyTuple_GET_ITEM(oins, got_in), &vin[got_in], 0, "chain input") != 0)
            goto fail;
        c.in[got_in] = vin[got_in].buf;
        map4_t *m = &c.map[got_in];
        if (parse_map(PyTuple_GET_ITEM(omaps, got_in), m, "chain input") != 0) {
            got_in++;
            goto fail;
        }
        long long reach = map_reach(m, d, 1);
        if (reach >= (long long)(vin[got_in].len / 4)) {
            PyErr_Format(PyExc_ValueError, "chain input %ld: its map reaches element %lld of %zd",
                         got_in, reach, vin[got_in].len / 4);
            got_in++;
            goto fail;
        }
        /* full: the output's own C layout (a size-1 dimension's stride is irrelevant) */
        c.full[got_in] = m->off == 0;
        for (int k = 0; k < 4; k++) {
            long inner = 1;
            for (int k2 = k + 1; k2 < 4; k2++) inner *= d[k2];
            if (d[k] > 1 && m->st[k] != inner) c.full[got_in] = 0;
        }
    }
    for (; got_out < nout; got_out++) {
        if (get_floats(PyTuple_GET_ITEM(oouts, got_out), &vout[got_out], 1, "chain output") != 0)
            goto fail;
        outp[got_out] = vout[got_out].buf;
        if (vout[got_out].len != n * 4) {
            PyErr_Format(PyExc_ValueError, "chain output %ld has %zd elements, expected %ld",
                         got_out, vout[got_out].len / 4, n);
            got_out++;
            goto fail;
        }
    }
    c.out = outp;
    choose();
    c.fast = chosen != &ISA_PORTABLE;
    long blocks = (n + CHAIN_BLOCK - 1) / CHAIN_BLOCK;
    size_t scratch_floats = (size_t)(nin + nops) * CHAIN_BLOCK;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > blocks) threads = blocks > 0 ? blocks : 1;
    if (n * nops < EW_PARALLEL_MIN) threads = 1;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (long t = 0; t < threads; t++) {
#if TP_X86
        unsigned csr = _mm_getcsr();
        _mm_setcsr(csr & ~(0x8000u | 0x0040u | 0x6000u));
#endif
        float *scratch = aligned_alloc(64, scratch_floats * 4);
        if (!scratch) {
            failed = 1;
        } else {
            chain_blocks(&c, blocks * t / threads, blocks * (t + 1) / threads, scratch);
            free(scratch);
        }
#if TP_X86
        _mm_setcsr(csr);
#endif
    }
    Py_END_ALLOW_THREADS;
    for (long k = 0; k < got_in; k++) PyBuffer_Release(&vin[k]);
    for (long k = 0; k < got_out; k++) PyBuffer_Release(&vout[k]);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
bad_spec:
    PyBuffer_Release(&vspec);
    PyErr_SetString(PyExc_ValueError, "chain: bad op spec (opcode, operand ref or output index)");
    return NULL;
fail:
    for (long k = 0; k < got_in; k++) PyBuffer_Release(&vin[k]);
    for (long k = 0; k < got_out; k++) PyBuffer_Release(&vout[k]);
    return NULL;
}

/* has_nan(buffer): whether a float32 buffer holds a NaN (a read-only scan, no allocation:
 * the check before a slot is exported, which canonicalises NaNs only when there are some). */
static PyObject *py_has_nan(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer v;
    if (get_floats(arg, &v, 0, "buffer") != 0) return NULL;
    const uint32_t *u = v.buf;
    long n = (long)(v.len / 4);
    uint32_t found = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (long i0 = 0; i0 < n && !found; i0 += 4096) {
        long i1 = i0 + 4096 < n ? i0 + 4096 : n;
        for (long i = i0; i < i1; i++) found |= (u[i] & 0x7FFFFFFFu) > 0x7F800000u;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&v);
    return PyBool_FromLong(found != 0);
}

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    choose();
    return PyUnicode_FromString(chosen->name);
}

static PyMethodDef methods[] = {
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_VARARGS | METH_KEYWORDS,
     "gemm(a, b, out, m, n, r, a_offset=0, a_strides=(r, 1), b_offset=0, b_strides=(n, 1), "
     "offsets=None, threads=1)\n\n"
     "For every batch (a, b, out) of the int64 `offsets` triples (one batch at 0 if None): "
     "out[o + i*n + j] = the sequential FMA chain over k of a[a_offset + oa + i*sa0 + k*sa1] * "
     "b[b_offset + ob + k*sb0 + j*sb1]. Buffers are contiguous float32; the same bits for any "
     "thread count and ISA path."},
    {"elementwise", py_elementwise, METH_VARARGS,
     "elementwise(code, out, operands, threads=1): out[i] = op(operands[k][i] or [0]) for "
     "code 0 SQRT, 1 MAX, 2 MIN, 3 LDEXP, 4 FMA (the IR's semantics, one rounding each)."},
    {"gather", py_gather, METH_VARARGS,
     "gather(out, index, table, shape4, (off, strides4), (off, strides4, rho), rows, threads=1): "
     "GATHER over an output of rank <= 4 (shape padded with leading 1s)."},
    {"reduce_sum", py_reduce_sum, METH_VARARGS,
     "reduce_sum(out, x, shape4, (off, strides4, rho), rows, threads=1): REDUCE_SUM, each "
     "output a sequential sum from +0.0 in r order."},
    {"chain", py_chain, METH_VARARGS,
     "chain(shape4, spec, inputs, maps, outputs, threads=1): a chain of element ops over an "
     "output of rank <= 4, block by block; spec is int32 rows (IR opcode, 3 operand refs, "
     "output index or -1); maps[k] = (offset, strides4) reads input k."},
    {"reduce_max", py_reduce_max, METH_VARARGS,
     "reduce_max(out, x, shape4, (off, strides4, rho), rows, threads=1): REDUCE_MAX, each "
     "output the IEEE 754-2019 maximum folded from -inf in r order."},
    {"has_nan", py_has_nan, METH_O, "has_nan(buffer): whether a float32 buffer holds a NaN."},
    {"isa", py_isa, METH_NOARGS, "The ISA path in use: avx512, avx2 or portable."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Native kernels of the canonical IR.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
