/*
 * protocol._treehash — RFC 9162 Merkle Tree Hash over fixed-size chunks of a buffer.
 *
 * The one native piece of trainproof. It computes exactly what protocol/merkle.py computes
 * (data_root of DESIGN §4.2): leaves H(0x00 || chunk) over CHUNK_BYTES-sized chunks (the
 * last one zero-padded), nodes H(0x01 || left || right), an unpaired last node promoted.
 * It releases the GIL and splits the leaves over threads; tests compare it bit for bit
 * with the pure-Python reference.
 *
 * Portable C SHA-256 (FIPS 180-4). A faster compression function may replace
 * sha256_blocks() without touching anything else.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_blocks(uint32_t st[8], const uint8_t *p, size_t nblocks) {
    uint32_t w[64];
    while (nblocks--) {
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
                   (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6],
                 h = st[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) +
                          K256[i] + w[i];
            uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        st[0] += a; st[1] += b; st[2] += c; st[3] += d;
        st[4] += e; st[5] += f; st[6] += g; st[7] += h;
        p += 64;
    }
}

/* SHA-256 of prefix byte || msg (msg of any length), written to out[32]. */
static void sha256_prefixed(uint8_t prefix, const uint8_t *msg, size_t len, uint8_t out[32]) {
    uint32_t st[8];
    memcpy(st, H0, sizeof st);
    uint8_t block[128];
    size_t total = len + 1;
    /* first block: prefix + 63 bytes of msg (or fewer) */
    size_t done = 0;
    if (total >= 64) {
        block[0] = prefix;
        memcpy(block + 1, msg, 63);
        sha256_blocks(st, block, 1);
        done = 63;
        size_t full = (len - done) / 64;
        sha256_blocks(st, msg + done, full);
        done += full * 64;
        size_t rest = len - done;
        memcpy(block, msg + done, rest);
        memset(block + rest, 0, sizeof block - rest);
        block[rest] = 0x80;
        size_t nb = rest + 1 + 8 <= 64 ? 1 : 2;
        uint64_t bits = (uint64_t)total * 8;
        for (int i = 0; i < 8; i++) block[nb * 64 - 1 - i] = (uint8_t)(bits >> (8 * i));
        sha256_blocks(st, block, nb);
    } else {
        memset(block, 0, sizeof block);
        block[0] = prefix;
        memcpy(block + 1, msg, len);
        block[total] = 0x80;
        size_t nb = total + 1 + 8 <= 64 ? 1 : 2;
        uint64_t bits = (uint64_t)total * 8;
        for (int i = 0; i < 8; i++) block[nb * 64 - 1 - i] = (uint8_t)(bits >> (8 * i));
        sha256_blocks(st, block, nb);
    }
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(st[i] >> 24);
        out[4 * i + 1] = (uint8_t)(st[i] >> 16);
        out[4 * i + 2] = (uint8_t)(st[i] >> 8);
        out[4 * i + 3] = (uint8_t)st[i];
    }
}

/* Reduce n hashes (32 bytes each, in place) to the RFC 9162 root in h[0..32). */
static void reduce_levels(uint8_t *h, size_t n) {
    uint8_t pair[64];
    while (n > 1) {
        size_t m = 0;
        for (size_t i = 0; i + 1 < n; i += 2, m++) {
            memcpy(pair, h + 32 * i, 64);
            sha256_prefixed(0x01, pair, 64, h + 32 * m);
        }
        if (n & 1) {
            memmove(h + 32 * m, h + 32 * (n - 1), 32);
            m++;
        }
        n = m;
    }
}

typedef struct {
    const uint8_t *data;
    size_t len, chunk, first, count; /* leaves [first, first+count) */
    uint8_t *out;                    /* root of this subtree (a power-of-two block) */
    uint8_t *scratch;
} job_t;

static void leaf_hash(const job_t *j, size_t i, uint8_t out[32]) {
    size_t off = i * j->chunk;
    if (off + j->chunk <= j->len) {
        sha256_prefixed(0x00, j->data + off, j->chunk, out);
    } else { /* last chunk: zero-padded */
        uint8_t *tmp = calloc(1, j->chunk);
        memcpy(tmp, j->data + off, j->len - off);
        sha256_prefixed(0x00, tmp, j->chunk, out);
        free(tmp);
    }
}

static void *run_job(void *arg) {
    job_t *j = arg;
    for (size_t i = 0; i < j->count; i++) leaf_hash(j, j->first + i, j->scratch + 32 * i);
    reduce_levels(j->scratch, j->count);
    memcpy(j->out, j->scratch, 32);
    return NULL;
}

/* Largest power of two strictly below n (n >= 2). */
static size_t split_point(size_t n) {
    size_t k = 1;
    while (k * 2 < n) k *= 2;
    return k;
}

/*
 * Cut leaves [0, n) into subtrees that RFC 9162 itself would form, so the roots can be
 * combined exactly as MTH does: recursively split at the largest power of two below n
 * until a piece is small enough for one thread. Returns the number of pieces.
 */
static size_t plan(size_t first, size_t n, size_t target, size_t *firsts, size_t *counts,
                   size_t npieces) {
    if (n <= target || n < 2) {
        firsts[npieces] = first;
        counts[npieces] = n;
        return npieces + 1;
    }
    size_t k = split_point(n);
    npieces = plan(first, k, target, firsts, counts, npieces);
    return plan(first + k, n - k, target, firsts, counts, npieces);
}

/* Combine piece roots following the same recursive split. */
static void combine(size_t first, size_t n, size_t target, uint8_t *roots, size_t *cursor,
                    uint8_t out[32]) {
    if (n <= target || n < 2) {
        memcpy(out, roots + 32 * (*cursor), 32);
        (*cursor)++;
        return;
    }
    size_t k = split_point(n);
    uint8_t pair[64];
    combine(first, k, target, roots, cursor, pair);
    combine(first + k, n - k, target, roots, cursor, pair + 32);
    sha256_prefixed(0x01, pair, 64, out);
}

static PyObject *mth_chunks(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t chunk, nthreads;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &chunk, &nthreads)) return NULL;
    if (chunk <= 0 || nthreads <= 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "chunk size and thread count must be positive");
        return NULL;
    }
    size_t len = (size_t)view.len;
    size_t n = (len + (size_t)chunk - 1) / (size_t)chunk;
    uint8_t root[32];
    if (n == 0) {
        PyBuffer_Release(&view);
        /* empty tree: SHA-256 of the empty string */
        static const uint8_t empty[32] = {
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
            0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
        return PyBytes_FromStringAndSize((const char *)empty, 32);
    }
    size_t threads = (size_t)nthreads;
    size_t target = (n + threads * 4 - 1) / (threads * 4); /* ~4 pieces per thread */
    if (target < 64) target = 64;
    size_t maxpieces = 2 * (n / target + 2) + 64;
    size_t *firsts = malloc(maxpieces * sizeof(size_t));
    size_t *counts = malloc(maxpieces * sizeof(size_t));
    size_t npieces = plan(0, n, target, firsts, counts, 0);
    uint8_t *roots = malloc(32 * npieces);
    uint8_t *scratch = malloc(32 * n);
    job_t *jobs = calloc(npieces, sizeof(job_t));
    size_t off = 0;
    for (size_t p = 0; p < npieces; p++) {
        jobs[p] = (job_t){(const uint8_t *)view.buf, len, (size_t)chunk, firsts[p], counts[p],
                          roots + 32 * p, scratch + 32 * off};
        off += counts[p];
    }
    Py_BEGIN_ALLOW_THREADS
    /* a simple pool: thread t runs pieces t, t+T, t+2T, ... */
    pthread_t *tids = malloc(threads * sizeof(pthread_t));
    size_t spawned = 0;
    for (size_t p = 0; p < npieces; p += threads) {
        spawned = 0;
        for (size_t t = 0; t < threads && p + t < npieces; t++) {
            if (t == 0) continue;
            pthread_create(&tids[t], NULL, run_job, &jobs[p + t]);
            spawned++;
        }
        run_job(&jobs[p]);
        for (size_t t = 1; t <= spawned; t++) pthread_join(tids[t], NULL);
    }
    free(tids);
    size_t cursor = 0;
    combine(0, n, target, roots, &cursor, root);
    Py_END_ALLOW_THREADS
    free(jobs); free(scratch); free(roots); free(firsts); free(counts);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)root, 32);
}

static PyMethodDef methods[] = {
    {"mth_chunks", mth_chunks, METH_VARARGS,
     "mth_chunks(buffer, chunk_bytes, threads) -> bytes\n\n"
     "RFC 9162 Merkle Tree Hash (SHA-256) over the buffer cut into chunk_bytes-sized\n"
     "leaves, the last zero-padded. Releases the GIL; uses up to `threads` threads."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_treehash",
                                    "Parallel RFC 9162 chunk-tree hashing.", -1, methods};

PyMODINIT_FUNC PyInit__treehash(void) { return PyModule_Create(&module); }
