// CFerryBaseline: the plain C loops that `ferry bench` measures Ferry against in the same run.
//
// Each tracking function sets up one write-tracking mechanism the shortest way it can be done in C, on a
// region of its own, and times a plain loop; the read pass times the plainest read of a region it is given
// (the floor for the region digest). Nothing here is used by the product itself.
#ifndef CFERRY_BASELINE_H
#define CFERRY_BASELINE_H

#include <stddef.h>

/// The mechanisms a baseline can measure.
typedef enum {
    CFerryBaselineUntracked = 0,
    CFerryBaselineMprotect = 1,
    CFerryBaselineUffdSync = 2,
    CFerryBaselineUffdAsync = 3,
} CFerryBaselineMechanism;

/// Maps `pages` fresh anonymous pages, populates them, write-protects them with `mechanism`, then writes
/// one byte to each page in a plain loop. Returns the mean nanoseconds per write, or -1 with errno set
/// when the mechanism cannot be set up here.
double CFerryBaseline_first_write_ns(CFerryBaselineMechanism mechanism, size_t pages);

/// Maps `pages` pages under userfaultfd asynchronous write-protection, arms them, writes every
/// `dirty_every`-th page, then times one PAGEMAP_SCAN pass that reports and re-protects the written
/// pages. Returns the milliseconds of that pass, or -1 with errno set.
double CFerryBaseline_pagemap_scan_ms(size_t pages, size_t dirty_every);

/// Reads the `bytes` bytes at `base` (8-byte aligned) once, summing its 64-bit words on four accumulators,
/// split into `threads` contiguous slices read in parallel (one on the calling thread, the others on threads
/// started for it). Returns the seconds from the start of the first slice to the end of the last, thread
/// start-up included, or -1 with errno set.
double CFerryBaseline_read_pass_seconds(const void *base, size_t bytes, int threads);

#endif
