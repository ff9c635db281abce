/* Native kernels of the canonical IR (docs/protocol.md §3.7, §3.12).
 *
 * matmul: C[m, n] = the sequential FMA chain acc_0 = +0.0, acc_{r+1} = fmaf(A[m, r], B[r, n],
 * acc_r), r = 0 .. R-1, over contiguous row-major A [M, R] and B [R, N]. Every output element
 * is one accumulator updated strictly in r order with IEEE fusedMultiplyAdd (C99 fmaf: one
 * rounding, correctly rounded whether the compiler emits vfmadd or calls libm), so the result
 * does not depend on the ISA path, the register tile, or how rows are split across threads:
 * each element is computed by exactly one thread in exactly one order.
 *
 * ISA paths (chosen at run time, all bit-identical): "avx512" (16-wide tiles, vfmadd on zmm),
 * "avx2" (FMA3), and "portable" (plain fmaf). TRAINPROOF_ISA=avx512|avx2|portable forces one;
 * isa() reports the path in use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MR 4
#define NR 16

typedef void (*block_fn)(const float *, const float *, float *, long, long, long, long, long);

#define BLOCK_BODY                                                                      \
    for (long m = m0; m < m1; m += MR) {                                                \
        long mr = m1 - m < MR ? m1 - m : MR;                                            \
        for (long n = 0; n < N; n += NR) {                                              \
            long nr = N - n < NR ? N - n : NR;                                          \
            if (mr == MR && nr == NR) {                                                 \
                float acc[MR][NR];                                                      \
                for (int i = 0; i < MR; i++)                                            \
                    for (int j = 0; j < NR; j++) acc[i][j] = 0.0f;                      \
                for (long r = 0; r < R; r++) {                                          \
                    const float *b = B + r * N + n;                                     \
                    for (int i = 0; i < MR; i++) {                                      \
                        float a = A[(m + i) * R + r];                                   \
                        for (int j = 0; j < NR; j++) acc[i][j] = fmaf(a, b[j], acc[i][j]); \
                    }                                                                   \
                }                                                                       \
                for (int i = 0; i < MR; i++)                                            \
                    for (int j = 0; j < NR; j++) C[(m + i) * N + n + j] = acc[i][j];    \
            } else {                                                                    \
                for (long i = 0; i < mr; i++)                                           \
                    for (long j = 0; j < nr; j++) {                                     \
                        float acc = 0.0f;                                               \
                        for (long r = 0; r < R; r++)                                    \
                            acc = fmaf(A[(m + i) * R + r], B[r * N + n + j], acc);      \
                        C[(m + i) * N + n + j] = acc;                                   \
                    }                                                                   \
            }                                                                           \
        }                                                                               \
    }

/* Scalar tail: elements outside a full register tile, each its own fmaf chain. */
#define TAIL(m_lo, m_hi, n_lo, n_hi)                                                    \
    for (long i = (m_lo); i < (m_hi); i++)                                              \
        for (long j = (n_lo); j < (n_hi); j++) {                                        \
            float acc = 0.0f;                                                           \
            for (long r = 0; r < R; r++) acc = fmaf(A[i * R + r], B[r * N + j], acc);   \
            C[i * N + j] = acc;                                                         \
        }

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* 4 rows x 32 columns of accumulators in 8 zmm registers; per r: 2 loads of B, 4 broadcasts
 * of A, 8 vfmadd231ps (one rounding each, in r order for every element). */
__attribute__((target("avx512f,fma"))) static void block_avx512(
    const float *A, const float *B, float *C, long N, long R, long m0, long m1, long unused) {
    (void)unused;
    long m = m0;
    for (; m + 4 <= m1; m += 4) {
        long n = 0;
        for (; n + 32 <= N; n += 32) {
            __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
            __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
            __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
            __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
            const float *a0 = A + m * R, *a1 = a0 + R, *a2 = a1 + R, *a3 = a2 + R;
            for (long r = 0; r < R; r++) {
                const float *b = B + r * N + n;
                __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
                __m512 x = _mm512_set1_ps(a0[r]);
                c00 = _mm512_fmadd_ps(x, b0, c00);
                c01 = _mm512_fmadd_ps(x, b1, c01);
                x = _mm512_set1_ps(a1[r]);
                c10 = _mm512_fmadd_ps(x, b0, c10);
                c11 = _mm512_fmadd_ps(x, b1, c11);
                x = _mm512_set1_ps(a2[r]);
                c20 = _mm512_fmadd_ps(x, b0, c20);
                c21 = _mm512_fmadd_ps(x, b1, c21);
                x = _mm512_set1_ps(a3[r]);
                c30 = _mm512_fmadd_ps(x, b0, c30);
                c31 = _mm512_fmadd_ps(x, b1, c31);
            }
            float *c = C + m * N + n;
            _mm512_storeu_ps(c, c00);
            _mm512_storeu_ps(c + 16, c01);
            _mm512_storeu_ps(c + N, c10);
            _mm512_storeu_ps(c + N + 16, c11);
            _mm512_storeu_ps(c + 2 * N, c20);
            _mm512_storeu_ps(c + 2 * N + 16, c21);
            _mm512_storeu_ps(c + 3 * N, c30);
            _mm512_storeu_ps(c + 3 * N + 16, c31);
        }
        TAIL(m, m + 4, n, N)
    }
    TAIL(m, m1, 0, N)
}

/* 4 rows x 16 columns of accumulators in 8 ymm registers. */
__attribute__((target("avx2,fma"))) static void block_avx2(
    const float *A, const float *B, float *C, long N, long R, long m0, long m1, long unused) {
    (void)unused;
    long m = m0;
    for (; m + 4 <= m1; m += 4) {
        long n = 0;
        for (; n + 16 <= N; n += 16) {
            __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
            __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
            __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
            __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
            const float *a0 = A + m * R, *a1 = a0 + R, *a2 = a1 + R, *a3 = a2 + R;
            for (long r = 0; r < R; r++) {
                const float *b = B + r * N + n;
                __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
                __m256 x = _mm256_set1_ps(a0[r]);
                c00 = _mm256_fmadd_ps(x, b0, c00);
                c01 = _mm256_fmadd_ps(x, b1, c01);
                x = _mm256_set1_ps(a1[r]);
                c10 = _mm256_fmadd_ps(x, b0, c10);
                c11 = _mm256_fmadd_ps(x, b1, c11);
                x = _mm256_set1_ps(a2[r]);
                c20 = _mm256_fmadd_ps(x, b0, c20);
                c21 = _mm256_fmadd_ps(x, b1, c21);
                x = _mm256_set1_ps(a3[r]);
                c30 = _mm256_fmadd_ps(x, b0, c30);
                c31 = _mm256_fmadd_ps(x, b1, c31);
            }
            float *c = C + m * N + n;
            _mm256_storeu_ps(c, c00);
            _mm256_storeu_ps(c + 8, c01);
            _mm256_storeu_ps(c + N, c10);
            _mm256_storeu_ps(c + N + 8, c11);
            _mm256_storeu_ps(c + 2 * N, c20);
            _mm256_storeu_ps(c + 2 * N + 8, c21);
            _mm256_storeu_ps(c + 3 * N, c30);
            _mm256_storeu_ps(c + 3 * N + 8, c31);
        }
        TAIL(m, m + 4, n, N)
    }
    TAIL(m, m1, 0, N)
}
#endif

static void block_portable(
    const float *A, const float *B, float *C, long N, long R, long m0, long m1, long unused) {
    (void)unused;
    BLOCK_BODY
}

static block_fn chosen = NULL;
static const char *chosen_name = "portable";

static void choose(void) {
    if (chosen) return;
    const char *want = getenv("TRAINPROOF_ISA");
    chosen = block_portable;
    chosen_name = "portable";
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (want && strcmp(want, "portable") == 0) return;
    if (has512 && !(want && strcmp(want, "avx2") == 0)) {
        chosen = block_avx512;
        chosen_name = "avx512";
    } else if (has2) {
        chosen = block_avx2;
        chosen_name = "avx2";
    }
#else
    (void)want;
#endif
}

typedef struct {
    const float *A, *B;
    float *C;
    long N, R, m0, m1;
} job_t;

static void *run_job(void *arg) {
    job_t *j = (job_t *)arg;
    chosen(j->A, j->B, j->C, j->N, j->R, j->m0, j->m1, 0);
    return NULL;
}

static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t want, int writable,
                      const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) return -1;
    if (view->itemsize != 4 || (view->format && strcmp(view->format, "f") != 0)) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous float32 buffer", what);
        PyBuffer_Release(view);
        return -1;
    }
    if (view->len != want * 4) {
        PyErr_Format(PyExc_ValueError, "%s has %zd elements, expected %zd", what,
                     view->len / 4, want);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *oa, *ob, *oc;
    long M, N, R, threads = 1;
    if (!PyArg_ParseTuple(args, "OOOlll|l", &oa, &ob, &oc, &M, &N, &R, &threads)) return NULL;
    if (M < 0 || N < 0 || R < 0) {
        PyErr_SetString(PyExc_ValueError, "negative matrix dimension");
        return NULL;
    }
    Py_buffer va, vb, vc;
    if (get_buffer(oa, &va, (Py_ssize_t)M * R, 0, "a") != 0) return NULL;
    if (get_buffer(ob, &vb, (Py_ssize_t)R * N, 0, "b") != 0) {
        PyBuffer_Release(&va);
        return NULL;
    }
    if (get_buffer(oc, &vc, (Py_ssize_t)M * N, 1, "out") != 0) {
        PyBuffer_Release(&va);
        PyBuffer_Release(&vb);
        return NULL;
    }
    choose();
    const float *A = va.buf, *B = vb.buf;
    float *C = vc.buf;
    long blocks = (M + MR - 1) / MR;
    if (threads < 1) threads = 1;
    if (threads > blocks) threads = blocks > 0 ? blocks : 1;
    Py_BEGIN_ALLOW_THREADS;
    if (threads == 1) {
        chosen(A, B, C, N, R, 0, M, 0);
    } else {
        pthread_t tid[64];
        job_t jobs[64];
        if (threads > 64) threads = 64;
        long per = (blocks + threads - 1) / threads;
        long started = 0;
        for (long t = 0; t < threads; t++) {
            long m0 = t * per * MR, m1 = (t + 1) * per * MR;
            if (m0 >= M) break;
            if (m1 > M) m1 = M;
            jobs[t] = (job_t){A, B, C, N, R, m0, m1};
            if (pthread_create(&tid[t], NULL, run_job, &jobs[t]) != 0) {
                run_job(&jobs[t]);  /* no thread: compute this block here */
                tid[t] = 0;
            }
            started = t + 1;
        }
        for (long t = 0; t < started; t++)
            if (tid[t]) pthread_join(tid[t], NULL);
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    PyBuffer_Release(&vc);
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    choose();
    return PyUnicode_FromString(chosen_name);
}

static PyMethodDef methods[] = {
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(a, b, out, M, N, R, threads=1): out[M,N] = sequential FMA chain of a[M,R] @ b[R,N] "
     "(contiguous float32 buffers)."},
    {"isa", py_isa, METH_NOARGS, "The ISA path in use: avx512, avx2 or portable."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Native kernels of the canonical IR.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
