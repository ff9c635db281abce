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
    {"isa", py_isa, METH_NOARGS, "The ISA path in use: avx512, avx2 or portable."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Native kernels of the canonical IR.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
