// The page hash of the region digest ("ferry-pagemix64-v2"), at memory speed: see digest.c for the algorithm.
//
// Every implementation (AVX2, SSE2, portable scalar) returns the same bits for the same bytes, so two hosts
// with different CPUs agree; `CShims_digest_run` picks the fastest this CPU has, once.
#ifndef CSHIMS_DIGEST_H
#define CSHIMS_DIGEST_H

#include <stddef.h>
#include <stdint.h>

/// The implementations, for tests and benchmarks; production code calls the functions without `_using`.
typedef enum {
    CShimsDigestBest = 0,    // the fastest available here (what the plain functions use)
    CShimsDigestScalar = 1,  // portable C, any CPU: the reference
    CShimsDigestSSE2 = 2,    // x86-64 only
    CShimsDigestAVX2 = 3,    // x86-64 with AVX2, chosen at run time
} CShimsDigestPath;

/// Granularity of a page: page sizes must be a positive multiple of this (4 KiB, 16 KiB, 64 KiB all are).
#define CSHIMS_DIGEST_BLOCK 1024

/// Whether `path` can run on this CPU.
int CShims_digest_available(CShimsDigestPath path);

/// The hash of one page of `page_size` bytes.
uint64_t CShims_digest_page(const void *page, size_t page_size);

/// A page's contribution to the region digest: its hash mixed with its index in the region.
uint64_t CShims_digest_contribution(uint64_t index, uint64_t hash);

/// Hashes the `count` consecutive pages at `pages`, the first being page `first_index` of the region, and
/// returns the wrapping sum of their contributions. When `hashes` is not NULL, stores each page's hash
/// there too (`count` entries).
uint64_t CShims_digest_run(const void *pages, size_t page_size, uint64_t first_index, size_t count, uint64_t *hashes);

/// `CShims_digest_run` on a chosen implementation; returns 0 and hashes nothing when it is not available.
uint64_t CShims_digest_run_using(CShimsDigestPath path, const void *pages, size_t page_size, uint64_t first_index,
                                 size_t count, uint64_t *hashes);

/// The wrapping sum of contributions of pages `first_index ..< first_index + count` whose hashes are
/// `hashes[0 ..< count]`, or all `hash` when `hashes` is NULL (a run of zero pages).
uint64_t CShims_digest_sum(const uint64_t *hashes, uint64_t hash, uint64_t first_index, size_t count);

#endif  // CSHIMS_DIGEST_H
