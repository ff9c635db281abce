/*
 * protocol._treehash — RFC 9162 Merkle Tree Hash over fixed-size chunks of a buffer.
 *
 * The one native piece of trainproof. It computes exactly what protocol/merkle.py computes
 * (data_root of DESIGN §4.2): leaves H(0x00 || chunk) over chunk_bytes-sized chunks (the
 * last one zero-padded), nodes H(0x01 || left || right), an unpaired last node promoted,
 * the empty tree H(""). It releases the GIL and splits the leaves over threads; tests
 * compare it bit for bit with the pure-Python reference.
 *
 * Layers, bottom up:
 *
 *   1. Messages and batches. Every hash is of "prefix byte || data, zero-extended to len
 *      bytes"; msg_block() — the ONE place that knows SHA-256 padding — yields its padded
 *      blocks, straight from the caller's buffer where possible, else through a 64-byte
 *      staging block (the first block with the prefix, the tail with 0x80 and the bit
 *      length, the zero-extension of a short last chunk). A batch is many messages of one
 *      length cut from one buffer: the leaves of a subtree, or a level of node pairs.
 *   2. Backends, each hashing a whole batch:
 *        - portable C (FIPS 180-4), one message at a time, correct on any CPU;
 *        - x86 SHA-NI, chosen at run time (cpuid), SHANI_LANES messages interleaved,
 *          because one SHA-NI stream is latency-bound (see 2b).
 *   3. The tree: a subtree's leaves are one batch, each level above another, reduced in
 *      place; RFC 9162-aligned subtrees are spread over threads and their roots combined.
 *
 * The environment variable TRAINPROOF_TREEHASH_PORTABLE (set, non-empty, not "0"), read at
 * every call, forces the portable backend, so tests cover both on SHA-NI machines;
 * backend() says which one a call would use now.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SHANI_CODE 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define HAVE_SHANI_CODE 0
#endif

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

/* ---------------------------------------------------------------------------------------
 * 1. Messages, batches, and the one place that knows SHA-256 padding.
 *
 * Every hash in the tree is of a message  prefix || data[0:avail] || zeros  of 1 + len
 * bytes (avail <= len; the zeros are the zero-padding of a short last chunk). SHA-256 then
 * appends 0x80, zeros, and the bit length as a big-endian u64, up to a multiple of 64
 * bytes. msg_block() produces that padded block stream; nothing else knows about padding.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *data;
    size_t avail, len;
    uint8_t prefix;
} msg_t;

static inline size_t msg_nblocks(size_t len) {
    /* 1 + len message bytes, then at least 1 + 8 bytes of padding */
    return (1 + len + 8) / 64 + 1;
}

/*
 * Block b of the padded message. A block lying entirely inside data[0:avail] is read
 * straight from the caller's buffer (block b >= 1 covers data[64b-1 .. 64b+63)); any other
 * block — the first (prefix), the last one or two (0x80, bit length), and those covering
 * the zero-padding of a short last chunk — is built in tmp[64]. No allocation either way.
 */
static inline const uint8_t *msg_block(const msg_t *m, size_t b, uint8_t tmp[64]) {
    if (b >= 1 && 64 * b + 63 <= m->avail) return m->data + 64 * b - 1;
    size_t lo = 64 * b, hi = lo + 64; /* the block's byte range in the padded message */
    size_t total = 1 + m->len;        /* message bytes, prefix included */
    memset(tmp, 0, 64);
    if (lo == 0) tmp[0] = m->prefix;
    size_t dlo = lo > 1 ? lo : 1, dhi = hi < 1 + m->avail ? hi : 1 + m->avail;
    if (dlo < dhi) memcpy(tmp + (dlo - lo), m->data + (dlo - 1), dhi - dlo);
    /* bytes [1 + avail, total) are the chunk's zero-padding: already zero */
    if (total >= lo && total < hi) tmp[total - lo] = 0x80;
    if (b == msg_nblocks(m->len) - 1) {
        uint64_t bits = (uint64_t)total * 8;
        for (int i = 0; i < 8; i++) tmp[63 - i] = (uint8_t)(bits >> (8 * i));
    }
    return tmp;
}

/*
 * A batch: `count` messages of the same length, cut from one buffer. Message i is
 * prefix || data[i*len .. (i+1)*len), zero-extended where it runs past `avail` readable
 * bytes; its digest goes to out + 32 i. Leaves are a batch (len = chunk_bytes, prefix 0),
 * and so is a tree level (len = 64: a pair of child hashes, prefix 1).
 *
 * The digests may be written over the data (out == data for a tree level): digest i lands
 * in [32i, 32i + 32), before message i's own bytes, so a backend that reads every message
 * before writing its digest — in order, or a group of messages at a time — never
 * overwrites a message it has not read.
 */
typedef struct {
    const uint8_t *data;
    size_t len, avail, count;
    uint8_t prefix;
    uint8_t *out;
} batch_t;

static inline msg_t batch_msg(const batch_t *bt, size_t i) {
    size_t off = i * bt->len; /* < avail: every message has at least one byte of data */
    size_t avail = bt->avail - off < bt->len ? bt->avail - off : bt->len;
    return (msg_t){bt->data + off, avail, bt->len, bt->prefix};
}

static inline void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---------------------------------------------------------------------------------------
 * 2a. Portable backend: FIPS 180-4, one message at a time.
 * ------------------------------------------------------------------------------------- */

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void portable_compress(uint32_t st[8], const uint8_t *p) {
    uint32_t w[64];
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
        uint32_t t1 =
            h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    st[0] += a; st[1] += b; st[2] += c; st[3] += d;
    st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

static void portable_hash_batch(const batch_t *bt) {
    uint8_t tmp[64];
    size_t nb = msg_nblocks(bt->len);
    for (size_t i = 0; i < bt->count; i++) {
        msg_t m = batch_msg(bt, i);
        uint32_t st[8];
        memcpy(st, H0, sizeof st);
        for (size_t b = 0; b < nb; b++) portable_compress(st, msg_block(&m, b, tmp));
        for (int w = 0; w < 8; w++) store_be32(bt->out + 32 * i + 4 * w, st[w]);
    }
}

/* ---------------------------------------------------------------------------------------
 * 2b. SHA-NI backend (x86, selected at run time), several messages interleaved.
 *
 * SHA256RNDS2 performs two rounds, and each pair of rounds needs the previous one, so one
 * message is latency-bound: the SHA unit idles at least half the time (on AMD Zen the
 * instruction has a latency of ~4 cycles but can issue every ~2). Interleaving the rounds
 * of independent messages — neighbouring leaves, or neighbouring node pairs of one tree
 * level — fills those bubbles; out-of-order execution does the fine-grained scheduling as
 * long as the independent chains sit next to each other in the instruction stream. This is
 * the idea of the Linux kernel's sha256_ni "finup2x". The messages of a batch all have the
 * same number of blocks, so the lanes stay in step.
 *
 * A batch is walked by groups of SHANI_LANES messages; successive groups are independent
 * too (each starts from H0), so the CPU also overlaps the end of one group with the start
 * of the next. The last group may be short: its spare lanes repeat its last message and
 * their digests are dropped (a lane costs little next to the latency of one stream).
 *
 * The state lives in the two registers SHA256RNDS2 expects, ABEF and CDGH; the message
 * schedule W[0..63] is kept as 16 groups of 4 words in a rolling window of 4 registers.
 * ------------------------------------------------------------------------------------- */
#if HAVE_SHANI_CODE

#define SHANI_TARGET __attribute__((target("sha,sse4.1")))
#define SHANI_INLINE static inline __attribute__((always_inline, target("sha,sse4.1")))

/* Messages in flight per thread. 2 is the kernel's choice; on the project's AMD Zen 4
 * machine 4 was ~10% faster than 2 (and 2 ~1.8x faster than 1) for 1 KiB leaves, despite
 * some register spills: 4 chains keep the SHA unit busier. Override with -DSHANI_LANES=n. */
#ifndef SHANI_LANES
#define SHANI_LANES 4
#endif
#define MAX_LANES 4 /* array bound for the per-lane state */
#if SHANI_LANES < 1 || SHANI_LANES > MAX_LANES
#error "SHANI_LANES must be between 1 and MAX_LANES"
#endif

/* A..H words <-> the ABEF / CDGH register layout of SHA256RNDS2. */
SHANI_INLINE void shani_load_state(const uint32_t st[8], __m128i *abef, __m128i *cdgh) {
    __m128i cdab = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[0]), 0xB1);
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[4]), 0x1B);
    *abef = _mm_alignr_epi8(cdab, efgh, 8);
    *cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
}

/* The digest: A..H as big-endian words. */
SHANI_INLINE void shani_store_digest(__m128i abef, __m128i cdgh, uint8_t out[32]) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    __m128i dcba = _mm_blend_epi16(feba, dchg, 0xF0);
    __m128i hgfe = _mm_alignr_epi8(dchg, feba, 8);
    _mm_storeu_si128((__m128i *)out, _mm_shuffle_epi8(dcba, bswap));
    _mm_storeu_si128((__m128i *)(out + 16), _mm_shuffle_epi8(hgfe, bswap));
}

/* One 64-byte block for each of `lanes` messages (a compile-time constant after inlining,
 * so the lane loops unroll and the per-lane arrays live in registers). */
SHANI_INLINE void shani_blocks(int lanes, __m128i *abef, __m128i *cdgh,
                               const uint8_t *const *p) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abef_in[MAX_LANES], cdgh_in[MAX_LANES], w[MAX_LANES][4];
    for (int l = 0; l < lanes; l++) {
        abef_in[l] = abef[l];
        cdgh_in[l] = cdgh[l];
    }
    /* Group g covers rounds 4g..4g+3 and message words W[4g..4g+3] (in w[l][g % 4]).
     *   g < 4:  W loaded from the block (big-endian);
     *   g >= 4: W[4g..] = msg2(msg1(W[4g-16..], W[4g-12..]) + W[4g-7..4g-4], W[4g-4..]),
     *           the msg1 part started two groups earlier, as soon as the raw words it
     *           overwrites are no longer needed by a later group's alignr. */
#pragma GCC unroll 16
    for (int g = 0; g < 16; g++) {
        const __m128i k = _mm_loadu_si128((const __m128i *)&K256[4 * g]);
#pragma GCC unroll 4
        for (int l = 0; l < lanes; l++) {
            __m128i *m = w[l];
            if (g < 4) {
                m[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p[l] + 16 * g)), bswap);
            } else {
                __m128i w7 = _mm_alignr_epi8(m[(g - 1) & 3], m[(g - 2) & 3], 4);
                m[g & 3] = _mm_sha256msg2_epu32(_mm_add_epi32(m[g & 3], w7), m[(g - 1) & 3]);
            }
            __m128i wk = _mm_add_epi32(m[g & 3], k);
            cdgh[l] = _mm_sha256rnds2_epu32(cdgh[l], abef[l], wk);
            abef[l] = _mm_sha256rnds2_epu32(abef[l], cdgh[l], _mm_shuffle_epi32(wk, 0x0E));
            if (g >= 2 && g <= 13) /* start W[4g+8..]: msg1(W[4g-8..], W[4g-4..]) */
                m[(g - 2) & 3] = _mm_sha256msg1_epu32(m[(g - 2) & 3], m[(g - 1) & 3]);
        }
    }
    for (int l = 0; l < lanes; l++) {
        abef[l] = _mm_add_epi32(abef[l], abef_in[l]);
        cdgh[l] = _mm_add_epi32(cdgh[l], cdgh_in[l]);
    }
}

/* The batch, `lanes` messages at a time (a constant after inlining). */
SHANI_INLINE void shani_hash_lanes(const batch_t *bt, const int lanes) {
    uint8_t tmp[MAX_LANES][64];
    __m128i abef0, cdgh0;
    shani_load_state(H0, &abef0, &cdgh0);
    size_t nb = msg_nblocks(bt->len);
    for (size_t i = 0; i < bt->count; i += lanes) {
        msg_t m[MAX_LANES];
        __m128i abef[MAX_LANES], cdgh[MAX_LANES];
        for (int l = 0; l < lanes; l++) {
            m[l] = batch_msg(bt, i + l < bt->count ? i + l : bt->count - 1);
            abef[l] = abef0;
            cdgh[l] = cdgh0;
        }
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *p[MAX_LANES];
            for (int l = 0; l < lanes; l++) {
                p[l] = msg_block(&m[l], b, tmp[l]);
                /* The same block of the next group's message: the reorder window holds
                 * about one block of this long dependency chain, too little to hide a
                 * cache miss at each block's first load, so ask for it a group early.
                 * (A prefetch past the buffer's end is harmless: it cannot fault.) */
                uintptr_t ahead = (uintptr_t)m[l].data + lanes * bt->len + 64 * b;
                _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            }
            shani_blocks(lanes, abef, cdgh, p);
        }
        for (int l = 0; l < lanes && i + l < bt->count; l++)
            shani_store_digest(abef[l], cdgh[l], bt->out + 32 * (i + l));
    }
}

/* A batch of fewer messages than lanes (one tree node: the path updates of state_roots,
 * a tensor root's header) runs one lane per message: repeating a message in spare lanes
 * would cost the latency of the longest chain for nothing. */
SHANI_TARGET static void shani_hash_batch(const batch_t *bt) {
    if (bt->count < SHANI_LANES)
        shani_hash_lanes(bt, 1);
    else
        shani_hash_lanes(bt, SHANI_LANES);
}

/* SHA-NI needs CPUID.7.0:EBX[29] (SHA) and the SSSE3/SSE4.1 shuffles around it. */
static int cpu_has_shani(void) {
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid(1, a, b, c, d);
    int ssse3 = (c >> 9) & 1, sse41 = (c >> 19) & 1;
    __cpuid_count(7, 0, a, b, c, d);
    return ssse3 && sse41 && ((b >> 29) & 1);
}
#endif /* HAVE_SHANI_CODE */

/* ---------------------------------------------------------------------------------------
 * Backend selection.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    void (*hash_batch)(const batch_t *bt);
} backend_t;

static const backend_t PORTABLE = {"portable", portable_hash_batch};
#if HAVE_SHANI_CODE
static const backend_t SHANI = {"sha-ni", shani_hash_batch};
static int shani_available; /* set once at module init */
#endif

/* Read at every call (under the GIL) so tests can flip it with monkeypatch.setenv. */
static const backend_t *select_backend(void) {
    const char *force = getenv("TRAINPROOF_TREEHASH_PORTABLE");
    if (force && *force && strcmp(force, "0") != 0) return &PORTABLE;
#if HAVE_SHANI_CODE
    if (shani_available) return &SHANI;
#endif
    return &PORTABLE;
}

/* ---------------------------------------------------------------------------------------
 * 3. The tree.
 * ------------------------------------------------------------------------------------- */

/* The root of the empty tree: SHA-256 of the empty string. */
static const uint8_t EMPTY_ROOT[32] = {
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};

/* Reduce n hashes (32 bytes each, in place) to the RFC 9162 root in h[0..32): pair
 * neighbours level by level (a level is one batch, hashed in place), promoting an unpaired
 * last node. */
static void reduce_levels(const backend_t *be, uint8_t *h, size_t n) {
    while (n > 1) {
        size_t pairs = n / 2;
        be->hash_batch(&(batch_t){h, 64, 64 * pairs, pairs, 0x01, h});
        if (n & 1) memmove(h + 32 * pairs, h + 32 * (n - 1), 32);
        n = pairs + (n & 1);
    }
}

typedef struct {
    const uint8_t *data;
    size_t len, chunk;
    size_t first, count; /* leaves [first, first + count) */
    uint8_t *scratch;    /* count * 32 bytes for the leaf hashes */
    uint8_t *out;        /* root of this subtree */
    int64_t nan_bits;    /* >= 0: hash every float32 NaN as these bits (-1: the bytes as given) */
} job_t;

static inline int is_nan32(uint32_t w) { return (w & 0x7fffffffu) > 0x7f800000u; }

/* Whether the float32 words of p[0, bytes) hold a NaN (one vectorisable pass). */
static int has_nan32(const uint8_t *p, size_t bytes) {
    size_t n = bytes / 4;
    for (size_t i = 0; i < n; i += 1024) { /* blocks: stop soon after the first NaN */
        size_t end = i + 1024 < n ? i + 1024 : n;
        unsigned any = 0;
        for (size_t k = i; k < end; k++) {
            uint32_t w;
            memcpy(&w, p + 4 * k, 4);
            any |= is_nan32(w);
        }
        if (any) return 1;
    }
    return 0;
}

/* Root of one subtree: its leaves are one batch, then the levels above. With nan_bits, a
 * range that holds a NaN is hashed from a copy with every NaN replaced (the common case, no
 * NaN, costs one read of the range). Returns 0, or -1 when that copy cannot be allocated. */
static int run_job(const backend_t *be, const job_t *j) {
    size_t off = j->first * j->chunk;
    size_t end = off + j->count * j->chunk < j->len ? off + j->count * j->chunk : j->len;
    const uint8_t *src = j->data + off;
    uint8_t *copy = NULL;
    if (j->nan_bits >= 0 && has_nan32(src, end - off)) {
        copy = malloc(end - off);
        if (!copy) return -1;
        const uint32_t bits = (uint32_t)j->nan_bits;
        for (size_t k = 0; k < (end - off) / 4; k++) {
            uint32_t w;
            memcpy(&w, src + 4 * k, 4);
            if (is_nan32(w)) w = bits;
            memcpy(copy + 4 * k, &w, 4);
        }
        src = copy;
    }
    be->hash_batch(&(batch_t){src, j->chunk, end - off, j->count, 0x00, j->scratch});
    free(copy);
    reduce_levels(be, j->scratch, j->count);
    memcpy(j->out, j->scratch, 32);
    return 0;
}

typedef struct {
    const backend_t *be;
    job_t *jobs;
    size_t njobs;
    atomic_size_t next; /* next job to claim */
    atomic_int failed;  /* a job could not allocate its NaN-free copy */
} pool_t;

/* Every thread, the calling one included, claims jobs until none is left. */
static void *worker(void *arg) {
    pool_t *pool = arg;
    for (;;) {
        size_t i = atomic_fetch_add_explicit(&pool->next, 1, memory_order_relaxed);
        if (i >= pool->njobs) return NULL;
        if (run_job(pool->be, &pool->jobs[i]) != 0) atomic_store(&pool->failed, 1);
    }
}

/* Run every job of the pool on up to `threads` threads (the calling one included; if a
 * thread cannot be started, the others do its share). Call without the GIL. */
static void run_pool(pool_t *pool, size_t threads, pthread_t *tids) {
    size_t spawned = 0;
    for (size_t t = 1; t < threads; t++) {
        if (pthread_create(&tids[spawned], NULL, worker, pool) != 0) break;
        spawned++;
    }
    worker(pool);
    for (size_t t = 0; t < spawned; t++) pthread_join(tids[t], NULL);
}

/* Largest power of two strictly below n (n >= 2). */
static size_t split_point(size_t n) {
    size_t k = 1;
    while (k * 2 < n) k *= 2;
    return k;
}

/*
 * Cut leaves [0, n) into subtrees that RFC 9162 itself would form, so their roots can be
 * combined exactly as MTH does: recursively split at the largest power of two below n
 * until a piece has at most `target` leaves. Returns the number of pieces.
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
static void combine(const backend_t *be, size_t n, size_t target, const uint8_t *roots,
                    size_t *cursor, uint8_t out[32]) {
    if (n <= target || n < 2) {
        memcpy(out, roots + 32 * (*cursor), 32);
        (*cursor)++;
        return;
    }
    size_t k = split_point(n);
    uint8_t pair[64];
    combine(be, k, target, roots, cursor, pair);
    combine(be, n - k, target, roots, cursor, pair + 32);
    be->hash_batch(&(batch_t){pair, 64, 64, 1, 0x01, out});
}

static PyObject *mth_chunks(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t chunk_arg, threads_arg;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &chunk_arg, &threads_arg)) return NULL;
    if (chunk_arg <= 0 || threads_arg <= 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "chunk size and thread count must be positive");
        return NULL;
    }
    const backend_t *be = select_backend();
    size_t len = (size_t)view.len, chunk = (size_t)chunk_arg;
    size_t n = len / chunk + (len % chunk != 0);
    if (n == 0) {
        PyBuffer_Release(&view);
        /* empty tree: SHA-256 of the empty string */
        return PyBytes_FromStringAndSize((const char *)EMPTY_ROOT, 32);
    }

    /* ~4 pieces per thread for balance, but not so small that per-piece overhead shows. */
    size_t threads = (size_t)threads_arg;
    size_t target = threads > n ? 1 : (n - 1) / (threads * 4) + 1;
    if (target < 64) target = 64;
    size_t maxpieces = 2 * (n / target + 2) + 64; /* plan() makes at most ~2n/target + log n */
    size_t *firsts = malloc(maxpieces * sizeof(size_t));
    size_t *counts = malloc(maxpieces * sizeof(size_t));
    uint8_t *scratch = n <= SIZE_MAX / 32 ? malloc(32 * n) : NULL;
    uint8_t *roots = NULL;
    job_t *jobs = NULL;
    pthread_t *tids = NULL;
    size_t npieces = 0;
    if (firsts && counts && scratch) {
        npieces = plan(0, n, target, firsts, counts, 0);
        roots = malloc(32 * npieces);
        jobs = malloc(npieces * sizeof(job_t));
        if (threads > npieces) threads = npieces;
        tids = malloc(threads * sizeof(pthread_t));
    }
    if (!roots || !jobs || !tids) {
        free(firsts); free(counts); free(scratch); free(roots); free(jobs); free(tids);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    size_t off = 0;
    for (size_t p = 0; p < npieces; p++) {
        jobs[p] = (job_t){(const uint8_t *)view.buf, len, chunk, firsts[p], counts[p],
                          scratch + 32 * off, roots + 32 * p, -1};
        off += counts[p];
    }

    uint8_t root[32];
    pool_t pool = {be, jobs, npieces, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    run_pool(&pool, threads, tids);
    size_t cursor = 0;
    combine(be, n, target, roots, &cursor, root);
    Py_END_ALLOW_THREADS

    free(firsts); free(counts); free(scratch); free(roots); free(jobs); free(tids);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)root, 32);
}

/* state_roots(values, updates): the RFC 9162 root of n 32-byte leaf values, then the root
 * after each update in turn. An update is (u32 little-endian index, 32-byte new value); every
 * level of the tree is kept, so each update re-hashes one leaf and its path (O(log n)): the
 * op-level state roots of a dispute trace in one call. Same tree as protocol/merkle.py. */
static void hash_one(const backend_t *be, const uint8_t *data, size_t len, uint8_t prefix,
                     uint8_t out[32]) {
    be->hash_batch(&(batch_t){data, len, len, 1, prefix, out});
}

static PyObject *state_roots(PyObject *self, PyObject *args) {
    Py_buffer vv, vu;
    if (!PyArg_ParseTuple(args, "y*y*", &vv, &vu)) return NULL;
    size_t n = (size_t)vv.len / 32, k = (size_t)vu.len / 36;
    if (vv.len % 32 || vu.len % 36 || (n == 0 && k > 0)) {
        PyBuffer_Release(&vv);
        PyBuffer_Release(&vu);
        PyErr_SetString(PyExc_ValueError, "state_roots: values are 32-byte leaves, updates "
                                          "36-byte (u32 index, value) records");
        return NULL;
    }
    const uint8_t *up = vu.buf;
    for (size_t u = 0; u < k; u++) {
        uint32_t idx = up[36 * u] | up[36 * u + 1] << 8 | up[36 * u + 2] << 16 |
                       (uint32_t)up[36 * u + 3] << 24;
        if (idx >= n) {
            PyBuffer_Release(&vv);
            PyBuffer_Release(&vu);
            return PyErr_Format(PyExc_ValueError, "state_roots: update %zu names leaf %u of %zu",
                                u, idx, n);
        }
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(32 * (k + 1)));
    if (!result) goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    if (n == 0) { /* the empty tree: H("") */
        memcpy(out, EMPTY_ROOT, 32);
        goto done;
    }
    size_t depth = 1, total = 0;
    for (size_t m = n; m > 1; m = (m + 1) / 2) depth++;
    size_t sizes[64], offs[64];
    for (size_t d = 0, m = n; d < depth; d++, m = (m + 1) / 2) {
        sizes[d] = m;
        offs[d] = total;
        total += m;
    }
    uint8_t *tree = malloc(32 * total);
    if (!tree) {
        Py_CLEAR(result);
        PyErr_NoMemory();
        goto done;
    }
    const backend_t *be = select_backend();
    Py_BEGIN_ALLOW_THREADS
    be->hash_batch(&(batch_t){vv.buf, 32, 32 * n, n, 0x00, tree}); /* leaves H(0x00 || v) */
    for (size_t d = 0; d + 1 < depth; d++) {
        uint8_t *below = tree + 32 * offs[d], *above = tree + 32 * offs[d + 1];
        size_t pairs = sizes[d] / 2;
        be->hash_batch(&(batch_t){below, 64, 64 * pairs, pairs, 0x01, above});
        if (sizes[d] & 1) memcpy(above + 32 * pairs, below + 32 * (sizes[d] - 1), 32);
    }
    memcpy(out, tree + 32 * offs[depth - 1], 32);
    for (size_t u = 0; u < k; u++) {
        const uint8_t *rec = up + 36 * u;
        size_t i = rec[0] | rec[1] << 8 | rec[2] << 16 | (size_t)rec[3] << 24;
        hash_one(be, rec + 4, 32, 0x00, tree + 32 * (offs[0] + i));
        for (size_t d = 0; d + 1 < depth; d++) {
            size_t parent = i / 2, left = 2 * parent;
            uint8_t *below = tree + 32 * offs[d], *dst = tree + 32 * (offs[d + 1] + parent);
            if (left + 1 < sizes[d])
                hash_one(be, below + 32 * left, 64, 0x01, dst);
            else
                memcpy(dst, below + 32 * left, 32);
            i = parent;
        }
        memcpy(out + 32 * (u + 1), tree + 32 * offs[depth - 1], 32);
    }
    Py_END_ALLOW_THREADS
    free(tree);
done:
    PyBuffer_Release(&vv);
    PyBuffer_Release(&vu);
    return result;
}

/* tensor_roots(buffers, chunk_bytes, threads, tensor_prefix, dtype, format, itemsize,
 *              nan_bits):
 * the tensor root H(tensor_prefix || dtype:u8 || numel:u64be || MTH(chunks)) of each buffer
 * (numel = its length / itemsize; its items must have the struct format `format`, native
 * or '<'-prefixed: the machine is little-endian), all in one call: every buffer's leaves are cut into
 * pieces as mth_chunks cuts one (a small buffer is one piece), the pieces of all buffers
 * shared by the threads, then each buffer's pieces combined. With nan_bits >= 0 (itemsize
 * 4), every float32 NaN is hashed as those bits: the committed form of a value computed with
 * NaNs as they came. What a dispute trace does for each op's output, without a Python call
 * per value. */
static PyObject *tensor_roots(PyObject *self, PyObject *args) {
    PyObject *seq_arg;
    Py_ssize_t chunk_arg, threads_arg, prefix_arg, dtype_arg, itemsize_arg;
    long long nan_bits;
    const char *format;
    if (!PyArg_ParseTuple(args, "OnnnnsnL", &seq_arg, &chunk_arg, &threads_arg, &prefix_arg,
                          &dtype_arg, &format, &itemsize_arg, &nan_bits))
        return NULL;
    if (chunk_arg <= 0 || threads_arg <= 0 || itemsize_arg <= 0 || prefix_arg < 0 ||
        prefix_arg > 255 || dtype_arg < 0 || dtype_arg > 255 || nan_bits > 0xffffffffLL ||
        (nan_bits >= 0 && itemsize_arg != 4)) {
        PyErr_SetString(PyExc_ValueError,
                        "tensor_roots: chunk size, threads and itemsize must be positive, prefix "
                        "and dtype bytes, nan_bits -1 or a u32 (float32 only)");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(seq_arg, "tensor_roots: buffers must be a sequence");
    if (!seq) return NULL;
    size_t nv = (size_t)PySequence_Fast_GET_SIZE(seq), chunk = (size_t)chunk_arg;
    size_t itemsize = (size_t)itemsize_arg;
    Py_buffer *views = calloc(nv ? nv : 1, sizeof(Py_buffer));
    size_t *leaves = calloc(nv ? nv : 1, sizeof(size_t)), *first_piece = NULL;
    size_t *firsts = NULL, *counts = NULL;
    uint8_t *scratch = NULL, *roots = NULL;
    job_t *jobs = NULL;
    pthread_t *tids = NULL;
    PyObject *result = NULL;
    size_t got = 0;
    if (!views || !leaves) {
        PyErr_NoMemory();
        goto done;
    }
    size_t total = 0;
    while (got < nv) { /* views[0, got) are held (released at the end) */
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &views[got],
                               PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0)
            goto done;
        size_t len = (size_t)views[got].len;
        const char *fmt = views[got].format ? views[got].format : "B";
        got++;
        if (strcmp(fmt, format) != 0 && !(fmt[0] == '<' && strcmp(fmt + 1, format) == 0)) {
            PyErr_Format(PyExc_TypeError, "tensor_roots: buffer %zu holds '%s' items, "
                         "expected '%s' (little-endian)", got - 1, fmt, format);
            goto done;
        }
        if (len % itemsize) {
            PyErr_Format(PyExc_ValueError, "tensor_roots: buffer %zu has %zu bytes, not a "
                         "multiple of the item size %zu", got - 1, len, itemsize);
            goto done;
        }
        leaves[got - 1] = len / chunk + (len % chunk != 0);
        total += leaves[got - 1];
    }
    size_t threads = (size_t)threads_arg;
    size_t target = threads > total ? 1 : (total ? (total - 1) / (threads * 4) + 1 : 1);
    if (target < 64) target = 64;
    size_t bound = 0; /* plan() makes at most ~2n/target + log n pieces of n leaves */
    for (size_t v = 0; v < nv; v++)
        bound += leaves[v] <= target ? 1 : 2 * (leaves[v] / target + 2) + 64;
    first_piece = malloc((nv + 1) * sizeof(size_t));
    firsts = malloc((bound ? bound : 1) * sizeof(size_t));
    counts = malloc((bound ? bound : 1) * sizeof(size_t));
    scratch = total <= SIZE_MAX / 32 ? malloc(32 * (total ? total : 1)) : NULL;
    if (!first_piece || !firsts || !counts || !scratch) {
        PyErr_NoMemory();
        goto done;
    }
    size_t npieces = 0;
    for (size_t v = 0; v < nv; v++) {
        first_piece[v] = npieces;
        if (leaves[v]) npieces = plan(0, leaves[v], target, firsts, counts, npieces);
    }
    first_piece[nv] = npieces;
    roots = malloc(32 * (npieces ? npieces : 1));
    jobs = malloc((npieces ? npieces : 1) * sizeof(job_t));
    if (threads > npieces) threads = npieces ? npieces : 1;
    tids = malloc(threads * sizeof(pthread_t));
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(32 * nv));
    if (!roots || !jobs || !tids || !result) {
        Py_CLEAR(result);
        PyErr_NoMemory();
        goto done;
    }
    size_t off = 0;
    for (size_t v = 0; v < nv; v++)
        for (size_t p = first_piece[v]; p < first_piece[v + 1]; p++) {
            jobs[p] = (job_t){(const uint8_t *)views[v].buf, (size_t)views[v].len, chunk,
                              firsts[p], counts[p], scratch + 32 * off, roots + 32 * p,
                              (int64_t)nan_bits};
            off += counts[p];
        }
    const backend_t *be = select_backend();
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    pool_t pool = {be, jobs, npieces, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    run_pool(&pool, threads, tids);
    for (size_t v = 0; v < nv; v++) {
        uint8_t header[41];
        header[0] = (uint8_t)dtype_arg;
        uint64_t numel = (uint64_t)views[v].len / itemsize;
        for (int i = 0; i < 8; i++) header[1 + i] = (uint8_t)(numel >> (56 - 8 * i));
        if (leaves[v]) {
            size_t cursor = 0;
            combine(be, leaves[v], target, roots + 32 * first_piece[v], &cursor, header + 9);
        } else {
            memcpy(header + 9, EMPTY_ROOT, 32);
        }
        be->hash_batch(&(batch_t){header, 41, 41, 1, (uint8_t)prefix_arg, out + 32 * v});
    }
    Py_END_ALLOW_THREADS
    if (atomic_load(&pool.failed)) {
        Py_CLEAR(result);
        PyErr_NoMemory();
    }
done:
    for (size_t v = 0; v < got; v++)
        if (views[v].obj) PyBuffer_Release(&views[v]);
    free(views); free(leaves); free(first_piece); free(firsts); free(counts);
    free(scratch); free(roots); free(jobs); free(tids);
    Py_DECREF(seq);
    return result;
}

static PyObject *backend(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(select_backend()->name);
}

static PyMethodDef methods[] = {
    {"mth_chunks", mth_chunks, METH_VARARGS,
     "mth_chunks(buffer, chunk_bytes, threads) -> bytes\n\n"
     "RFC 9162 Merkle Tree Hash (SHA-256) over the buffer cut into chunk_bytes-sized\n"
     "leaves, the last zero-padded. Releases the GIL; uses up to `threads` threads."},
    {"state_roots", state_roots, METH_VARARGS,
     "state_roots(values, updates) -> bytes\n\n"
     "The RFC 9162 root over 32-byte leaf values, then the root after each update (u32 LE\n"
     "index + 32-byte value, applied in turn): (len(updates)/36 + 1) roots of 32 bytes."},
    {"tensor_roots", tensor_roots, METH_VARARGS,
     "tensor_roots(buffers, chunk_bytes, threads, tensor_prefix, dtype, format, itemsize,\n"
     "             nan_bits) -> bytes\n\n"
     "The tensor root of each C-contiguous buffer of `format` items (32 bytes each, in order): the chunk\n"
     "trees of all buffers hashed together on up to `threads` threads, then each header.\n"
     "nan_bits >= 0 hashes every float32 NaN as those bits; -1 hashes the bytes as given."},
    {"backend", backend, METH_NOARGS,
     "backend() -> str\n\n"
     "The SHA-256 implementation mth_chunks would use now: 'sha-ni' or 'portable'\n"
     "(TRAINPROOF_TREEHASH_PORTABLE=1 forces 'portable')."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_treehash",
                                    "Parallel RFC 9162 chunk-tree hashing.", -1, methods};

PyMODINIT_FUNC PyInit__treehash(void) {
#if HAVE_SHANI_CODE
    shani_available = cpu_has_shani();
#endif
    return PyModule_Create(&module);
}
