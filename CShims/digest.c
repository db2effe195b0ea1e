// The page hash of the region digest, "ferry-pagemix64-v2" (RegionDigest in FerryMigration).
//
// Not cryptographic: it catches a page that differs between two hosts' copies. The algorithm is defined on
// fixed lanes, whatever instructions compute it, in the manner of XXH3's long-input loop:
//
//   - a page is read as little-endian 64-bit words, in blocks of 1 KiB = 16 stripes of 64 bytes = 8 words;
//   - eight 64-bit accumulators start at INIT; for word i (0..7) of stripe s (0..15) of a block, with
//     v the word and k = v ^ KEY[s + i]:   acc[i ^ 1] += v;   acc[i] += lo32(k) * hi32(k)   (mod 2^64);
//   - after each block every accumulator is scrambled: a ^= a >> 47; a ^= SCRAMBLE[i]; a *= PRIME32;
//   - the page's hash is mix(page_size * PRIME64 + sum over j of fold(acc[2j] ^ MERGE[2j], acc[2j+1] ^ MERGE[2j+1]))
//     where fold is the 64x64->128 product with its halves xored, and mix is MurmurHash3's fmix64.
//
// Why it catches a change: within a block, changing word i moves acc[i ^ 1] by exactly the difference
// (the product term lands in another accumulator), the scramble is a bijection (the multiplier is odd), and
// what later words add does not depend on the accumulators, so any change confined to one word of a page
// always leaves different accumulators; only the final 512 -> 64 bit merge can collide (about 2^-64). Words
// meet a key that slides with the stripe, so swapping stripes changes the products too.
//
// Identical results everywhere: the lanes and the order-free arithmetic (wrapping adds of the same terms,
// 32x32->64 products, shifts, xors) are fixed above; AVX2 holds lanes 0-3 and 4-7 in two registers, SSE2
// in four, the scalar code in an array, and all compute the same terms. The tests compare them on random
// pages. Words are loaded little-endian on every host.
#include "CShimsDigest.h"

#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { LANES = 8, STRIPE = 64, STRIPES = CSHIMS_DIGEST_BLOCK / STRIPE };

// Constants: KEY, SCRAMBLE and MERGE are consecutive outputs of splitmix64 seeded with 0x666572727964696;
// INIT and the primes are XXH3's.
static const uint64_t KEY[STRIPES + LANES - 1] = {
    0x1fb9b23b396c4c96ULL, 0xf23c4228c9472aa5ULL, 0x301aa59f2280e808ULL, 0xdbe046d19444f928ULL,
    0x32e605a70eaa46efULL, 0x9128b60d1978d0c4ULL, 0xbe49c05e3dc6ac1cULL, 0x0b42a56e533d0da1ULL,
    0x37e05dbf9a0d85d5ULL, 0xfccf9bcee910bf48ULL, 0x09a6c8f20177ed47ULL, 0x69f54c50931e3eedULL,
    0x062fcca995c7b961ULL, 0xf929a40ec1319d97ULL, 0xaf2b6faf9107a4b6ULL, 0x937680f2ed292d1cULL,
    0xcf747a8d31c86c03ULL, 0x76bccbfcd9624e7aULL, 0x4005c0b91f86d999ULL, 0x1e86502cc07bf6b0ULL,
    0x0ca522642f024eb8ULL, 0xab8730de6819f333ULL, 0xb4aceca9e54a0d27ULL,
};
static const uint64_t SCRAMBLE[LANES] = {
    0xf478f97243e01d08ULL, 0x0d00560091382490ULL, 0xa833eff7d82c87a9ULL, 0x0315146b27599f64ULL,
    0x4ad322bcf8ab446dULL, 0x466e0735c90d4e8bULL, 0x14da5dae38c24512ULL, 0xdcd3a4bff2ede791ULL,
};
static const uint64_t MERGE[LANES] = {
    0x2345b308440e13fdULL, 0x7e7dea69d397026fULL, 0x8f71055aea193e3bULL, 0x5fccc79c722fda08ULL,
    0xf24723e4993a0ae3ULL, 0xc9c04dab171c45b2ULL, 0x16d99ed1b8e1fd4cULL, 0x11000a799b0da38bULL,
};
static const uint64_t INIT[LANES] = {
    0x00000000C2B2AE3DULL, 0x9E3779B185EBCA87ULL, 0xC2B2AE3D27D4EB4FULL, 0x165667B19E3779F9ULL,
    0x85EBCA77C2B2AE63ULL, 0x0000000085EBCA77ULL, 0x27D4EB2F165667C5ULL, 0x000000009E3779B1ULL,
};
#define PRIME32 0x9E3779B1ULL
#define PRIME64 0x9E3779B185EBCA87ULL

/// Hashes `blocks` blocks at `p` into `acc` (one implementation of the lane loop above).
typedef void (*lanes_fn)(const unsigned char *p, size_t blocks, uint64_t acc[LANES]);

static inline uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 33)) * 0xFF51AFD7ED558CCDULL;
    z = (z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53ULL;
    return z ^ (z >> 33);
}

static inline uint64_t fold(uint64_t a, uint64_t b) {
    __uint128_t product = (__uint128_t)a * b;
    return (uint64_t)product ^ (uint64_t)(product >> 64);
}

static inline uint64_t finish(const uint64_t acc[LANES], size_t page_size) {
    uint64_t h = (uint64_t)page_size * PRIME64;
    for (int j = 0; j < LANES; j += 2) h += fold(acc[j] ^ MERGE[j], acc[j + 1] ^ MERGE[j + 1]);
    return mix(h);
}

uint64_t CShims_digest_contribution(uint64_t index, uint64_t hash) { return mix(hash ^ (index * 0xFF51AFD7ED558CCDULL)); }

// MARK: - Scalar: the reference

static inline uint64_t load_le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static void scalar_lanes(const unsigned char *p, size_t blocks, uint64_t acc[LANES]) {
    for (size_t b = 0; b < blocks; b++, p += CSHIMS_DIGEST_BLOCK) {
        for (int s = 0; s < STRIPES; s++) {
            for (int i = 0; i < LANES; i++) {
                uint64_t v = load_le64(p + s * STRIPE + 8 * i), k = v ^ KEY[s + i];
                acc[i ^ 1] += v;
                acc[i] += (k & 0xFFFFFFFFu) * (k >> 32);
            }
        }
        for (int i = 0; i < LANES; i++) {
            uint64_t a = acc[i];
            a ^= a >> 47;
            a ^= SCRAMBLE[i];
            acc[i] = a * PRIME32;
        }
    }
}

#if defined(__x86_64__)
// MARK: - SSE2 (every x86-64): lanes 2j, 2j+1 in register j

static void sse2_lanes(const unsigned char *p, size_t blocks, uint64_t acc[LANES]) {
    __m128i a[4];
    for (int j = 0; j < 4; j++) a[j] = _mm_loadu_si128((const __m128i *)(acc + 2 * j));
    const __m128i prime = _mm_set1_epi64x(PRIME32);
    for (size_t b = 0; b < blocks; b++, p += CSHIMS_DIGEST_BLOCK) {
        for (int s = 0; s < STRIPES; s++) {
            for (int j = 0; j < 4; j++) {
                __m128i v = _mm_loadu_si128((const __m128i *)(p + s * STRIPE + 16 * j));
                __m128i k = _mm_xor_si128(v, _mm_loadu_si128((const __m128i *)(KEY + s + 2 * j)));
                __m128i product = _mm_mul_epu32(k, _mm_srli_epi64(k, 32));           // lo32(k) * hi32(k)
                __m128i swapped = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2));     // lane i gets word i ^ 1
                a[j] = _mm_add_epi64(a[j], _mm_add_epi64(product, swapped));
            }
        }
        for (int j = 0; j < 4; j++) {
            __m128i x = _mm_xor_si128(_mm_xor_si128(a[j], _mm_srli_epi64(a[j], 47)),
                                      _mm_loadu_si128((const __m128i *)(SCRAMBLE + 2 * j)));
            // x * PRIME32 mod 2^64 = lo32(x) * PRIME32 + (hi32(x) * PRIME32 << 32)
            a[j] = _mm_add_epi64(_mm_mul_epu32(x, prime), _mm_slli_epi64(_mm_mul_epu32(_mm_srli_epi64(x, 32), prime), 32));
        }
    }
    for (int j = 0; j < 4; j++) _mm_storeu_si128((__m128i *)(acc + 2 * j), a[j]);
}

// MARK: - AVX2: lanes 0-3 in register 0, 4-7 in register 1

__attribute__((target("avx2"))) static void avx2_lanes(const unsigned char *p, size_t blocks, uint64_t acc[LANES]) {
    __m256i a[2];
    for (int j = 0; j < 2; j++) a[j] = _mm256_loadu_si256((const __m256i *)(acc + 4 * j));
    const __m256i prime = _mm256_set1_epi64x(PRIME32);
    for (size_t b = 0; b < blocks; b++, p += CSHIMS_DIGEST_BLOCK) {
        for (int s = 0; s < STRIPES; s++) {
            for (int j = 0; j < 2; j++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(p + s * STRIPE + 32 * j));
                __m256i k = _mm256_xor_si256(v, _mm256_loadu_si256((const __m256i *)(KEY + s + 4 * j)));
                __m256i product = _mm256_mul_epu32(k, _mm256_srli_epi64(k, 32));
                __m256i swapped = _mm256_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2));  // within 128-bit halves
                a[j] = _mm256_add_epi64(a[j], _mm256_add_epi64(product, swapped));
            }
        }
        for (int j = 0; j < 2; j++) {
            __m256i x = _mm256_xor_si256(_mm256_xor_si256(a[j], _mm256_srli_epi64(a[j], 47)),
                                         _mm256_loadu_si256((const __m256i *)(SCRAMBLE + 4 * j)));
            a[j] = _mm256_add_epi64(_mm256_mul_epu32(x, prime),
                                    _mm256_slli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(x, 32), prime), 32));
        }
    }
    for (int j = 0; j < 2; j++) _mm256_storeu_si256((__m256i *)(acc + 4 * j), a[j]);
}
#endif

// MARK: - Dispatch

static lanes_fn lanes_for(CShimsDigestPath path) {
    switch (path) {
    case CShimsDigestScalar: return scalar_lanes;
#if defined(__x86_64__)
    case CShimsDigestSSE2: return sse2_lanes;
    case CShimsDigestAVX2: return __builtin_cpu_supports("avx2") ? avx2_lanes : NULL;
    case CShimsDigestBest: return __builtin_cpu_supports("avx2") ? avx2_lanes : sse2_lanes;
#else
    case CShimsDigestBest: return scalar_lanes;
#endif
    default: return NULL;
    }
}

int CShims_digest_available(CShimsDigestPath path) { return lanes_for(path) != NULL; }

uint64_t CShims_digest_run_using(CShimsDigestPath path, const void *pages, size_t page_size, uint64_t first_index,
                                 size_t count, uint64_t *hashes) {
    lanes_fn lanes = lanes_for(path);
    if (lanes == NULL || page_size == 0 || page_size % CSHIMS_DIGEST_BLOCK != 0) return 0;
    const unsigned char *p = pages;
    uint64_t sum = 0;
    for (size_t n = 0; n < count; n++, p += page_size) {
        uint64_t acc[LANES];
        memcpy(acc, INIT, sizeof acc);
        lanes(p, page_size / CSHIMS_DIGEST_BLOCK, acc);
        uint64_t hash = finish(acc, page_size);
        if (hashes != NULL) hashes[n] = hash;
        sum += CShims_digest_contribution(first_index + n, hash);
    }
    return sum;
}

uint64_t CShims_digest_run(const void *pages, size_t page_size, uint64_t first_index, size_t count, uint64_t *hashes) {
    return CShims_digest_run_using(CShimsDigestBest, pages, page_size, first_index, count, hashes);
}

uint64_t CShims_digest_page(const void *page, size_t page_size) {
    uint64_t hash = 0;
    CShims_digest_run(page, page_size, 0, 1, &hash);
    return hash;
}

uint64_t CShims_digest_sum(const uint64_t *hashes, uint64_t hash, uint64_t first_index, size_t count) {
    uint64_t sum = 0;
    for (size_t n = 0; n < count; n++) sum += CShims_digest_contribution(first_index + n, hashes != NULL ? hashes[n] : hash);
    return sum;
}
