#ifndef _GNU_SOURCE
#error "CFerryBaseline must be built with _GNU_SOURCE"
#endif

#include "CFerryBaseline.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef PAGEMAP_SCAN
struct page_region { uint64_t start, end, categories; };
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
        category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WRITTEN (1 << 1)
#endif

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static size_t page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static char *map_populated(size_t bytes) {
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    memset(p, 1, bytes);
    return p;
}

static double write_loop(volatile char *p, size_t pages, size_t ps) {
    double start = now_ns();
    for (size_t i = 0; i < pages; i++) p[i * ps] = 2;
    return (now_ns() - start) / (double)pages;
}

// mprotect + SIGSEGV, minimal
static char *mp_base;
static size_t mp_len;
static uint64_t *mp_bits;
static void mp_handler(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)ctx;
    int saved = errno;
    uintptr_t a = (uintptr_t)info->si_addr, b = (uintptr_t)mp_base;
    size_t ps = page_size();
    if (a >= b && a < b + mp_len) {
        size_t page = (a - b) / ps;
        mprotect(mp_base + page * ps, ps, PROT_READ | PROT_WRITE);
        __atomic_fetch_or(&mp_bits[page / 64], 1ULL << (page % 64), __ATOMIC_ACQ_REL);
    } else {
        signal(SIGSEGV, SIG_DFL);
    }
    errno = saved;
}

static double mprotect_baseline(size_t pages) {
    size_t ps = page_size();
    mp_len = pages * ps;
    mp_base = map_populated(mp_len);
    if (!mp_base) return -1;
    mp_bits = calloc(pages / 64 + 1, 8);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = mp_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old);
    mprotect(mp_base, mp_len, PROT_READ);
    double ns = write_loop(mp_base, pages, ps);
    sigaction(SIGSEGV, &old, NULL);
    munmap(mp_base, mp_len);
    free(mp_bits);
    return ns;
}

static int open_uffd(uint64_t features, int extra_flags) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | extra_flags);
    if (fd < 0) return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(fd, UFFDIO_API, &api) != 0 || (api.features & features) != features) {
        int saved = errno ? errno : ENOTSUP;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static int register_wp(int fd, char *p, size_t len) {
    struct uffdio_register reg = {.range = {.start = (uintptr_t)p, .len = len}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) return -1;
    struct uffdio_writeprotect wp = {.range = {.start = (uintptr_t)p, .len = len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    return ioctl(fd, UFFDIO_WRITEPROTECT, &wp);
}

// uffd sync: a handler thread
struct sync_ctx { int uffd; int stop[2]; size_t ps; uint64_t *bits; uintptr_t base; };
static void *sync_thread(void *arg) {
    struct sync_ctx *c = arg;
    struct pollfd fds[2] = {{.fd = c->uffd, .events = POLLIN}, {.fd = c->stop[0], .events = POLLIN}};
    struct uffd_msg msg;
    for (;;) {
        if (poll(fds, 2, -1) < 0) continue;
        if (fds[1].revents) return NULL;
        if (read(c->uffd, &msg, sizeof msg) != sizeof msg) continue;
        if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
        uintptr_t page = (msg.arg.pagefault.address - c->base) / c->ps;
        struct uffdio_writeprotect wp = {.range = {.start = c->base + page * c->ps, .len = c->ps}, .mode = 0};
        ioctl(c->uffd, UFFDIO_WRITEPROTECT, &wp);
        __atomic_fetch_or(&c->bits[page / 64], 1ULL << (page % 64), __ATOMIC_ACQ_REL);
    }
}

static double uffd_baseline(size_t pages, int async) {
    size_t ps = page_size(), len = pages * ps;
    char *p = map_populated(len);
    if (!p) return -1;
    int fd = async ? open_uffd(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY)
                   : open_uffd(0, UFFD_USER_MODE_ONLY);
    if (fd < 0 || register_wp(fd, p, len) != 0) {
        int saved = errno;
        if (fd >= 0) close(fd);
        munmap(p, len);
        errno = saved;
        return -1;
    }
    double ns;
    if (async) {
        ns = write_loop(p, pages, ps);
    } else {
        struct sync_ctx c = {.uffd = fd, .ps = ps, .base = (uintptr_t)p};
        c.bits = calloc(pages / 64 + 1, 8);
        if (pipe(c.stop) != 0) return -1;
        pthread_t t;
        pthread_create(&t, NULL, sync_thread, &c);
        ns = write_loop(p, pages, ps);
        (void)!write(c.stop[1], "x", 1);
        pthread_join(t, NULL);
        close(c.stop[0]);
        close(c.stop[1]);
        free(c.bits);
    }
    close(fd);
    munmap(p, len);
    return ns;
}

double CFerryBaseline_first_write_ns(CFerryBaselineMechanism mechanism, size_t pages) {
    switch (mechanism) {
    case CFerryBaselineUntracked: {
        size_t ps = page_size();
        char *p = map_populated(pages * ps);
        if (!p) return -1;
        double ns = write_loop(p, pages, ps);
        munmap(p, pages * ps);
        return ns;
    }
    case CFerryBaselineMprotect: return mprotect_baseline(pages);
    case CFerryBaselineUffdSync: return uffd_baseline(pages, 0);
    case CFerryBaselineUffdAsync: return uffd_baseline(pages, 1);
    }
    errno = EINVAL;
    return -1;
}

double CFerryBaseline_pagemap_scan_ms(size_t pages, size_t dirty_every) {
    size_t ps = page_size(), len = pages * ps;
    char *p = map_populated(len);
    if (!p) return -1;
    int fd = open_uffd(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY);
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || pm < 0 || register_wp(fd, p, len) != 0) {
        int saved = errno;
        if (fd >= 0) close(fd);
        if (pm >= 0) close(pm);
        munmap(p, len);
        errno = saved;
        return -1;
    }
    for (size_t i = 0; i < pages; i += dirty_every) p[i * ps] = 3;
    enum { VEC = 4096 };
    static struct page_region vec[VEC];
    uint64_t found = 0;
    double start = now_ns();
    uint64_t cursor = (uintptr_t)p, end = (uintptr_t)p + len;
    while (cursor < end) {
        struct pm_scan_arg arg = {
            .size = sizeof arg, .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            .start = cursor, .end = end, .vec = (uintptr_t)vec, .vec_len = VEC,
            .category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN,
        };
        int n = ioctl(pm, PAGEMAP_SCAN, &arg);
        if (n < 0) { found = 0; break; }
        for (int i = 0; i < n; i++) found += (vec[i].end - vec[i].start) / ps;
        cursor = arg.walk_end;
    }
    double ms = (now_ns() - start) / 1e6;
    close(pm);
    close(fd);
    munmap(p, len);
    if (found == 0 && pages >= dirty_every) { errno = EIO; return -1; }
    return ms;
}

// MARK: - Read pass (what a memory-speed digest is measured against)

/// One slice of a read pass and its result.
struct read_slice {
    const uint64_t *words;
    size_t count;
    uint64_t sum;
};

/// A plain read of a slice: the sum of its 64-bit words on four accumulators (so the adds do not chain).
static void *read_slice(void *arg) {
    struct read_slice *slice = arg;
    const uint64_t *w = slice->words;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= slice->count; i += 4) { a += w[i]; b += w[i + 1]; c += w[i + 2]; d += w[i + 3]; }
    for (; i < slice->count; i++) a += w[i];
    slice->sum = a + b + c + d;
    return NULL;
}

/// Keeps the sums alive, so the compiler cannot drop the reads.
static volatile uint64_t read_sink;

double CFerryBaseline_read_pass_seconds(const void *base, size_t bytes, int threads) {
    enum { MAX_THREADS = 256 };
    if (threads < 1 || threads > MAX_THREADS || (uintptr_t)base % 8 != 0) { errno = EINVAL; return -1; }
    struct read_slice slices[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    size_t words = bytes / 8, per = (words + (size_t)threads - 1) / (size_t)threads;
    for (int t = 0; t < threads; t++) {
        size_t first = (size_t)t * per < words ? (size_t)t * per : words;
        size_t end = first + per < words ? first + per : words;
        slices[t] = (struct read_slice){ .words = (const uint64_t *)base + first, .count = end - first };
    }
    double start = now_ns();
    // Slices 1... on threads of their own, slice 0 on this one (as the digest's concurrentPerform does).
    int started = 1;
    for (; started < threads; started++) {
        if (pthread_create(&ids[started], NULL, read_slice, &slices[started]) != 0) break;
    }
    read_slice(&slices[0]);
    for (int t = 1; t < started; t++) pthread_join(ids[t], NULL);
    double seconds = (now_ns() - start) / 1e9;
    if (started < threads) { errno = EAGAIN; return -1; }
    uint64_t sum = 0;
    for (int t = 0; t < threads; t++) sum += slices[t].sum;
    read_sink = sum;
    return seconds;
}
