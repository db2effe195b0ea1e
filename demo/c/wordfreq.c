/*
 * wordfreq — a Ferry demo: a word-frequency index with a nontrivial pointer structure, live-migratable.
 *
 *   wordfreq start   --steps N --output FILE --shared-dir DIR --control SOCK [--region-size BYTES]
 *                    [--step-delay-us U]
 *   wordfreq receive --listen ADDR:PORT --shared-dir DIR --control SOCK
 *   wordfreq plain   --steps N --output FILE      (the same computation with malloc and no Ferry: the reference)
 *
 * The workload reads a deterministic pseudo-random stream of words (skewed: a few words are frequent, most
 * are rare) and keeps, all of it in Ferry's region:
 *   - a chained hash table of entries, grown with ferry_realloc (chains split in place) and shrunk with
 *     alloc + rehash + free;
 *   - an LRU doubly-linked list through every entry (a hit moves the entry to the front; when the index is
 *     full the least recently used entry is evicted);
 *   - per entry, a growing array of the positions where the word was seen (ferry_realloc, doubled as it grows,
 *     shrunk when it is trimmed);
 *   - a log of the last deletions (a singly-linked queue);
 *   - the PRNG state, the counters, and the options (steps, output path, delay) the receiver needs.
 * One step is OPS_PER_STEP operations, then ferry_safe_point. Every few steps a sweep deletes rare entries.
 * After the last step the result (counts and digests of the whole structure in canonical order) is written
 * to --output, fsync'd and printed. `plain` runs the same code with libc's allocator (through the same
 * function-pointer indirection) and must produce byte-identical output.
 */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"

#define WF_NAME "wordfreq"
#define WF_MAGIC 0x71657266726f5757ULL /* "WWorfreq" */
#define WF_VERSION 1

#define OPS_PER_STEP 128          /* operations per step (one step = one unit of work between safe points) */
#define VOCABULARY 100000u        /* distinct words the stream can produce */
#define MAX_LIVE 6000u            /* LRU capacity: past it, the least recently used entry is evicted */
#define SWEEP_EVERY 64u           /* steps between sweeps */
#define SWEEP_MIN_COUNT 3u        /* a sweep deletes entries seen fewer times than this */
#define MIN_BUCKETS 64u
#define MAX_LOAD_NUM 3u           /* grow when entries > buckets * 3/4 */
#define MAX_LOAD_DEN 4u
#define MIN_LOAD_DEN 8u           /* shrink when entries < buckets / 8 */
#define POS_KEEP 16u              /* a position array that reaches POS_MAX keeps its last POS_KEEP entries */
#define POS_MAX 64u
#define DELLOG_MAX 256u           /* deletions remembered */
#define MAX_WORD 24

/* ---------------------------------------------------------------------------------------------------- */
/* The allocator indirection: Ferry's region allocator (start/receive) or libc's (plain).                */

typedef struct allocator {
    void *(*alloc)(size_t n);
    void *(*realloc)(void *p, size_t n);
    void (*free)(void *p);
} allocator;

static ferry_t *g_f; /* this process's handle (never stored in the region) */

static void *ferry_alloc_fn(size_t n) { return ferry_alloc(g_f, n); }
static void *ferry_realloc_fn(void *p, size_t n) { return ferry_realloc(g_f, p, n); }
static void ferry_free_fn(void *p) { ferry_free(g_f, p); }
static void *libc_alloc_fn(size_t n) { return malloc(n); }
static void *libc_realloc_fn(void *p, size_t n) { return realloc(p, n); }
static void libc_free_fn(void *p) { free(p); }

static const allocator ferry_allocator = {ferry_alloc_fn, ferry_realloc_fn, ferry_free_fn};
static const allocator libc_allocator = {libc_alloc_fn, libc_realloc_fn, libc_free_fn};
static const allocator *A = &libc_allocator;

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("wordfreq: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void die_ferry(const char *what, int rc) __attribute__((noreturn));
static void die_ferry(const char *what, int rc) {
    const char *detail = ferry_last_error();
    fprintf(stderr, "wordfreq: %s: %s\n", what, ferry_strerror(rc));
    if (detail && *detail) fprintf(stderr, "wordfreq: %s\n", detail);
    exit(1);
}

static void *xalloc(size_t n) {
    void *p = A->alloc(n);
    if (!p) die("out of memory (%zu bytes): raise --region-size", n);
    return p;
}

static void *xrealloc(void *p, size_t n) {
    void *q = A->realloc(p, n);
    if (!q) die("out of memory (realloc to %zu bytes): raise --region-size", n);
    return q;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The state. Everything below lives in the region (or in malloc'd memory for `plain`).                   */

typedef struct entry {
    struct entry *next;     /* hash chain */
    struct entry *lru_prev; /* towards the most recently used */
    struct entry *lru_next; /* towards the least recently used */
    uint64_t hash;
    uint64_t count;
    uint64_t last_seen;     /* operation number of the last hit */
    uint32_t *pos;          /* positions (operation numbers, truncated) of the recent hits */
    uint32_t npos, cappos;
    uint32_t len;
    char word[];            /* NUL-terminated */
} entry;

typedef struct deletion {
    struct deletion *next;
    uint64_t count;    /* the count the word had */
    uint64_t when;     /* operation number */
    uint8_t why;       /* 'd' deleted by the stream, 's' swept, 'e' evicted */
    char word[MAX_WORD + 1];
} deletion;

typedef struct wf_root {
    uint64_t magic;
    uint64_t version;
    /* options (the receiver takes them from here) */
    uint64_t steps_total;
    uint64_t step_delay_us;
    int output_relative; /* output is relative to the shared dir */
    char output[PATH_MAX];
    /* progress */
    uint64_t step; /* steps done */
    uint64_t op;   /* operations done */
    uint64_t rng[4];
    /* the hash table */
    entry **buckets;
    uint64_t nbuckets; /* a power of two */
    uint64_t nentries;
    /* the LRU list */
    entry *lru_head, *lru_tail;
    /* the deletion log: a queue */
    deletion *del_head, *del_tail;
    uint64_t ndel;
    /* counters */
    uint64_t total;     /* sum of the counts of the live entries */
    uint64_t inserts, hits, deletes, misses, evictions, sweeps, swept, grows, shrinks, trims, pos_reallocs;
} wf_root;

/* ---------------------------------------------------------------------------------------------------- */
/* Deterministic pseudo-random numbers (xoshiro256**) and words.                                         */

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ULL

static uint64_t fnv_u64(uint64_t h, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    return fnv1a(h, b, 8);
}

/* The word with this id: 3 to 12 letters from a pronounceable-ish alphabet, a pure function of id. */
static uint32_t word_of(uint32_t id, char out[MAX_WORD + 1]) {
    static const char cons[] = "bcdfghjklmnprstvwz";
    static const char vow[] = "aeiou";
    uint64_t x = id * 0x2545f4914f6cdd1dULL + 1;
    uint64_t r = splitmix(&x);
    uint32_t len = 3 + (uint32_t)(r % 10);
    for (uint32_t i = 0; i < len; i++) {
        if ((i & 7) == 0) r = splitmix(&x);
        out[i] = (i & 1) ? vow[(r >> 8) % 5] : cons[r % 18];
        r >>= 11;
    }
    /* a suffix makes every id's word distinct */
    int n = snprintf(out + len, MAX_WORD + 1 - len, "%u", id % 97);
    len += (uint32_t)n;
    out[len] = '\0';
    return len;
}

/* A skewed word id: small ids are much more frequent. */
static uint32_t next_word_id(wf_root *r) {
    uint64_t a = rng_next(r->rng), b = rng_next(r->rng), c = rng_next(r->rng);
    uint64_t id = c % (1 + b % (1 + a % VOCABULARY));
    return (uint32_t)((id * 2654435761u) % VOCABULARY); /* scatter the frequent ids over the vocabulary */
}

/* ---------------------------------------------------------------------------------------------------- */
/* The hash table and the LRU list.                                                                      */

static uint64_t word_hash(const char *w, size_t n) { return fnv1a(FNV_INIT, w, n); }

static entry *lookup(wf_root *r, const char *w, size_t n, uint64_t h, entry ***slot_out) {
    entry **slot = &r->buckets[h & (r->nbuckets - 1)];
    for (; *slot; slot = &(*slot)->next) {
        entry *e = *slot;
        if (e->hash == h && e->len == n && memcmp(e->word, w, n) == 0) {
            if (slot_out) *slot_out = slot;
            return e;
        }
    }
    if (slot_out) *slot_out = slot;
    return NULL;
}

static void lru_unlink(wf_root *r, entry *e) {
    if (e->lru_prev) e->lru_prev->lru_next = e->lru_next; else r->lru_head = e->lru_next;
    if (e->lru_next) e->lru_next->lru_prev = e->lru_prev; else r->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(wf_root *r, entry *e) {
    e->lru_prev = NULL;
    e->lru_next = r->lru_head;
    if (r->lru_head) r->lru_head->lru_prev = e; else r->lru_tail = e;
    r->lru_head = e;
}

/* Grow: ferry_realloc the bucket array to twice its size, then split every chain in place. */
static void table_grow(wf_root *r) {
    uint64_t old = r->nbuckets;
    r->buckets = xrealloc(r->buckets, 2 * old * sizeof(entry *));
    for (uint64_t i = old; i < 2 * old; i++) r->buckets[i] = NULL;
    for (uint64_t i = 0; i < old; i++) {
        entry *e = r->buckets[i], *lo = NULL, *hi = NULL, **lo_end = &lo, **hi_end = &hi;
        while (e) {
            entry *next = e->next;
            e->next = NULL;
            if (e->hash & old) { *hi_end = e; hi_end = &e->next; }
            else { *lo_end = e; lo_end = &e->next; }
            e = next;
        }
        r->buckets[i] = lo;
        r->buckets[i + old] = hi;
    }
    r->nbuckets = 2 * old;
    r->grows++;
}

/* Shrink: a fresh smaller array, rehash every entry into it (keeping chain order), free the old one. */
static void table_shrink(wf_root *r) {
    uint64_t n = r->nbuckets;
    while (n > MIN_BUCKETS && r->nentries * MIN_LOAD_DEN < n) n /= 2;
    if (n == r->nbuckets) return;
    entry **nb = xalloc(n * sizeof(entry *));
    entry ***ends = xalloc(n * sizeof(entry **));
    for (uint64_t i = 0; i < n; i++) { nb[i] = NULL; ends[i] = &nb[i]; }
    for (uint64_t i = 0; i < r->nbuckets; i++) {
        entry *e = r->buckets[i];
        while (e) {
            entry *next = e->next;
            uint64_t j = e->hash & (n - 1);
            e->next = NULL;
            *ends[j] = e;
            ends[j] = &e->next;
            e = next;
        }
    }
    A->free(ends);
    A->free(r->buckets);
    r->buckets = nb;
    r->nbuckets = n;
    r->shrinks++;
}

static void log_deletion(wf_root *r, const entry *e, uint8_t why) {
    deletion *d;
    if (r->ndel == DELLOG_MAX) { /* reuse the oldest record */
        d = r->del_head;
        r->del_head = d->next;
        if (!r->del_head) r->del_tail = NULL;
        r->ndel--;
        A->free(d); /* and allocate anew: more churn for the allocator */
    }
    d = xalloc(sizeof *d);
    d->next = NULL;
    d->count = e->count;
    d->when = r->op;
    d->why = why;
    memcpy(d->word, e->word, e->len + 1);
    if (r->del_tail) r->del_tail->next = d; else r->del_head = d;
    r->del_tail = d;
    r->ndel++;
}

/* Remove e (found at *slot) from the table and the LRU list and free it. */
static void remove_entry(wf_root *r, entry **slot, entry *e, uint8_t why) {
    log_deletion(r, e, why);
    *slot = e->next;
    lru_unlink(r, e);
    r->nentries--;
    r->total -= e->count;
    A->free(e->pos);
    A->free(e);
}

static void remove_by_word(wf_root *r, entry *e, uint8_t why) {
    entry **slot;
    entry *found = lookup(r, e->word, e->len, e->hash, &slot);
    if (found != e) die("internal error: entry '%s' not in its chain", e->word);
    remove_entry(r, slot, e, why);
}

static void add_position(wf_root *r, entry *e) {
    if (e->npos == POS_MAX) { /* trim: keep the last POS_KEEP, shrink the array */
        memmove(e->pos, e->pos + (POS_MAX - POS_KEEP), POS_KEEP * sizeof(uint32_t));
        e->npos = POS_KEEP;
        e->pos = xrealloc(e->pos, POS_KEEP * sizeof(uint32_t));
        e->cappos = POS_KEEP;
        r->trims++;
    }
    if (e->npos == e->cappos) {
        uint32_t cap = e->cappos ? 2 * e->cappos : 2;
        e->pos = xrealloc(e->pos, cap * sizeof(uint32_t)); /* realloc(NULL, n) the first time */
        e->cappos = cap;
        r->pos_reallocs++;
    }
    e->pos[e->npos++] = (uint32_t)r->op;
}

static void op_insert(wf_root *r, const char *w, uint32_t n) {
    uint64_t h = word_hash(w, n);
    entry **slot;
    entry *e = lookup(r, w, n, h, &slot);
    if (e) {
        e->count++;
        r->hits++;
        lru_unlink(r, e);
        lru_push_front(r, e);
    } else {
        if (r->nentries >= MAX_LIVE) { /* evict the least recently used */
            remove_by_word(r, r->lru_tail, 'e');
            r->evictions++;
            lookup(r, w, n, h, &slot); /* the chain may have changed */
        }
        e = xalloc(sizeof *e + n + 1);
        memset(e, 0, sizeof *e);
        e->hash = h;
        e->len = n;
        memcpy(e->word, w, n + 1);
        e->count = 1;
        *slot = e; /* append at the end of its chain */
        lru_push_front(r, e);
        r->nentries++;
        r->inserts++;
        if (r->nentries * MAX_LOAD_DEN > r->nbuckets * MAX_LOAD_NUM) table_grow(r);
    }
    r->total++;
    e->last_seen = r->op;
    add_position(r, e);
}

static void op_delete(wf_root *r, const char *w, uint32_t n) {
    uint64_t h = word_hash(w, n);
    entry **slot;
    entry *e = lookup(r, w, n, h, &slot);
    if (!e) { r->misses++; return; }
    remove_entry(r, slot, e, 'd');
    r->deletes++;
}

/* Delete every entry seen fewer than SWEEP_MIN_COUNT times, walking the LRU list from its tail. */
static void sweep(wf_root *r) {
    entry *e = r->lru_tail;
    while (e) {
        entry *prev = e->lru_prev;
        if (e->count < SWEEP_MIN_COUNT) { remove_by_word(r, e, 's'); r->swept++; }
        e = prev;
    }
    r->sweeps++;
    table_shrink(r);
}

static void do_step(wf_root *r) {
    char w[MAX_WORD + 1];
    for (int i = 0; i < OPS_PER_STEP; i++) {
        uint64_t kind = rng_next(r->rng) % 100;
        uint32_t n = word_of(next_word_id(r), w);
        if (kind < 99) op_insert(r, w, n);
        else op_delete(r, w, n);
        r->op++;
    }
    r->step++;
    if (r->step % SWEEP_EVERY == 0) sweep(r);
}

static wf_root *new_root(uint64_t steps, uint64_t delay_us, const char *output, int relative) {
    wf_root *r = xalloc(sizeof *r);
    memset(r, 0, sizeof *r);
    r->magic = WF_MAGIC;
    r->version = WF_VERSION;
    r->steps_total = steps;
    r->step_delay_us = delay_us;
    r->output_relative = relative;
    snprintf(r->output, sizeof r->output, "%s", output);
    uint64_t seed = 20240601;
    for (int i = 0; i < 4; i++) r->rng[i] = splitmix(&seed);
    r->nbuckets = MIN_BUCKETS;
    r->buckets = xalloc(MIN_BUCKETS * sizeof(entry *));
    for (uint64_t i = 0; i < MIN_BUCKETS; i++) r->buckets[i] = NULL;
    return r;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The result: counts and digests of the whole structure in canonical order.                             */

static int cmp_entry_word(const void *a, const void *b) {
    const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
    return strcmp(x->word, y->word);
}

static int cmp_entry_top(const void *a, const void *b) {
    const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return strcmp(x->word, y->word);
}

static size_t format_result(wf_root *r, char *out, size_t cap) {
    /* every entry, sorted by word */
    entry **all = xalloc((r->nentries ? r->nentries : 1) * sizeof(entry *));
    uint64_t n = 0, max_chain = 0;
    for (uint64_t i = 0; i < r->nbuckets; i++) {
        uint64_t chain = 0;
        for (entry *e = r->buckets[i]; e; e = e->next) {
            if (n == r->nentries) die("internal error: more entries in the table than recorded");
            all[n++] = e;
            chain++;
        }
        if (chain > max_chain) max_chain = chain;
    }
    if (n != r->nentries) die("internal error: %" PRIu64 " entries in the table, %" PRIu64 " recorded", n, r->nentries);
    qsort(all, n, sizeof *all, cmp_entry_word);
    uint64_t hd = FNV_INIT, sum = 0;
    for (uint64_t i = 0; i < n; i++) {
        entry *e = all[i];
        hd = fnv1a(hd, e->word, e->len + 1);
        hd = fnv_u64(hd, e->count);
        hd = fnv_u64(hd, e->last_seen);
        hd = fnv_u64(hd, e->npos);
        hd = fnv1a(hd, e->pos, e->npos * sizeof(uint32_t));
        sum += e->count;
    }
    /* the LRU order, most recent first */
    uint64_t hl = FNV_INIT, nl = 0;
    for (entry *e = r->lru_head; e; e = e->lru_next, nl++) hl = fnv1a(hl, e->word, e->len + 1);
    /* the deletion log, oldest first */
    uint64_t hx = FNV_INIT;
    for (deletion *d = r->del_head; d; d = d->next) {
        hx = fnv1a(hx, d->word, strlen(d->word) + 1);
        hx = fnv_u64(hx, d->count);
        hx = fnv_u64(hx, d->when);
        hx = fnv1a(hx, &d->why, 1);
    }
    size_t len = 0;
#define OUT(...) (len += (size_t)snprintf(out + len, len < cap ? cap - len : 0, __VA_ARGS__))
    OUT("wordfreq steps %" PRIu64 " operations %" PRIu64 "\n", r->step, r->op);
    OUT("entries %" PRIu64 " (lru %" PRIu64 ") buckets %" PRIu64 " longest-chain %" PRIu64 " total %" PRIu64
        " (sum %" PRIu64 ")\n", r->nentries, nl, r->nbuckets, max_chain, r->total, sum);
    OUT("inserts %" PRIu64 " hits %" PRIu64 " deletes %" PRIu64 " misses %" PRIu64 " evictions %" PRIu64
        " sweeps %" PRIu64 " swept %" PRIu64 "\n", r->inserts, r->hits, r->deletes, r->misses, r->evictions,
        r->sweeps, r->swept);
    OUT("grows %" PRIu64 " shrinks %" PRIu64 " position-reallocs %" PRIu64 " trims %" PRIu64 " deletion-log %" PRIu64
        "\n", r->grows, r->shrinks, r->pos_reallocs, r->trims, r->ndel);
    OUT("digest entries %016" PRIx64 " lru %016" PRIx64 " deletions %016" PRIx64 "\n", hd, hl, hx);
    qsort(all, n, sizeof *all, cmp_entry_top);
    OUT("top");
    for (uint64_t i = 0; i < n && i < 8; i++) OUT(" %s=%" PRIu64, all[i]->word, all[i]->count);
    OUT("\n");
#undef OUT
    A->free(all);
    if (len >= cap) die("internal error: result longer than %zu bytes", cap);
    return len;
}

static void write_file(const char *path, const char *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("cannot create %s: %s", path, strerror(errno));
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, data + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) die("cannot write %s: %s", path, strerror(errno));
        done += (size_t)w;
    }
    if (fsync(fd) != 0) die("cannot fsync %s: %s", path, strerror(errno));
    if (close(fd) != 0) die("cannot close %s: %s", path, strerror(errno));
    /* and the directory entry */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY);
    if (dfd >= 0) { (void)fsync(dfd); close(dfd); }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Ferry's verify callback: the program's invariants. Runs on a Ferry thread while the workload waits at */
/* a safe point, so the structure is still; it only reads.                                               */

static int in_region(const void *p, size_t n) {
    if (!g_f) return 1;
    uintptr_t base = (uintptr_t)ferry_region_base(g_f), size = ferry_region_size(g_f), a = (uintptr_t)p;
    return a >= base && a - base <= size && size - (a - base) >= n;
}

static int verify(void *ctx, char *detail, size_t cap) {
    wf_root *r = ctx;
#define FAIL(...) do { snprintf(detail, cap, "wordfreq: " __VA_ARGS__); return 1; } while (0)
    if (!in_region(r, sizeof *r) || r->magic != WF_MAGIC) FAIL("root is not a wordfreq state");
    if (r->nbuckets < MIN_BUCKETS || (r->nbuckets & (r->nbuckets - 1)) != 0)
        FAIL("bucket count %" PRIu64 " is not a power of two >= %u", r->nbuckets, MIN_BUCKETS);
    if (!in_region(r->buckets, r->nbuckets * sizeof(entry *))) FAIL("bucket array outside the region");
    if (r->nentries > MAX_LIVE) FAIL("%" PRIu64 " entries, more than the capacity %u", r->nentries, MAX_LIVE);
    if (r->nentries * MAX_LOAD_DEN > r->nbuckets * MAX_LOAD_NUM)
        FAIL("load %" PRIu64 "/%" PRIu64 " above %u/%u", r->nentries, r->nbuckets, MAX_LOAD_NUM, MAX_LOAD_DEN);
    /* the table: every entry in the right bucket, counts add up */
    uint64_t n = 0, sum = 0;
    for (uint64_t i = 0; i < r->nbuckets; i++) {
        for (entry *e = r->buckets[i]; e; e = e->next) {
            if (!in_region(e, sizeof *e)) FAIL("bucket %" PRIu64 " holds a pointer outside the region", i);
            if (++n > r->nentries) FAIL("more entries reachable from the table than the %" PRIu64 " recorded", r->nentries);
            if (e->len > MAX_WORD || e->word[e->len] != '\0' || word_hash(e->word, e->len) != e->hash)
                FAIL("entry in bucket %" PRIu64 " has a damaged word or hash", i);
            if ((e->hash & (r->nbuckets - 1)) != i) FAIL("entry '%s' in bucket %" PRIu64 ", belongs elsewhere", e->word, i);
            if (e->count == 0) FAIL("entry '%s' has count 0", e->word);
            if (e->npos > e->cappos || e->cappos > POS_MAX || (e->cappos && !in_region(e->pos, e->cappos * 4)))
                FAIL("entry '%s' has a damaged position array (%u of %u)", e->word, e->npos, e->cappos);
            sum += e->count;
        }
    }
    if (n != r->nentries) FAIL("%" PRIu64 " entries reachable from the table, %" PRIu64 " recorded", n, r->nentries);
    if (sum != r->total) FAIL("counts sum to %" PRIu64 ", total recorded %" PRIu64, sum, r->total);
    /* the LRU list: well linked both ways, and every element is the table's entry for its word */
    uint64_t nl = 0;
    entry *prev = NULL;
    for (entry *e = r->lru_head; e; prev = e, e = e->lru_next) {
        if (!in_region(e, sizeof *e)) FAIL("LRU list holds a pointer outside the region");
        if (++nl > r->nentries) FAIL("LRU list longer than the %" PRIu64 " entries (or a cycle)", r->nentries);
        if (e->lru_prev != prev) FAIL("LRU list: '%s' has a wrong back link", e->word);
        if (e->len > MAX_WORD || e->word[e->len] != '\0') FAIL("LRU list: damaged word");
        if (lookup(r, e->word, e->len, word_hash(e->word, e->len), NULL) != e)
            FAIL("LRU entry '%s' is not reachable from the table", e->word);
    }
    if (prev != r->lru_tail) FAIL("LRU tail does not end the list");
    if (nl != r->nentries) FAIL("LRU list has %" PRIu64 " entries, the table %" PRIu64, nl, r->nentries);
    /* (table entries == recorded == LRU length, and every LRU element is found in the table: a bijection) */
    uint64_t nd = 0;
    for (deletion *d = r->del_head; d; d = d->next)
        if (!in_region(d, sizeof *d) || ++nd > DELLOG_MAX) FAIL("deletion log damaged");
    if (nd != r->ndel) FAIL("deletion log has %" PRIu64 " records, %" PRIu64 " recorded", nd, r->ndel);
#undef FAIL
    snprintf(detail, cap,
             "wordfreq: invariants hold at step %" PRIu64 "/%" PRIu64 ": %" PRIu64 " entries in %" PRIu64
             " buckets (load %.2f), LRU list matches the table both ways, counts sum to total %" PRIu64,
             r->step, r->steps_total, r->nentries, r->nbuckets, (double)r->nentries / (double)r->nbuckets, r->total);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Options and main.                                                                                     */

static void usage(void) {
    fputs("usage: wordfreq start   --steps N --output FILE --shared-dir DIR --control SOCK [--region-size BYTES]\n"
          "                        [--step-delay-us U]\n"
          "       wordfreq receive --listen ADDR:PORT --shared-dir DIR --control SOCK\n"
          "       wordfreq plain   --steps N --output FILE\n",
          stderr);
    exit(2);
}

/* 12345, 64KiB, 256MiB, 1GiB, 4k, 10M (powers of 1024), 1MB (powers of 1000). */
static int parse_size(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-') return -1;
    uint64_t mul = 1;
    if (*end) {
        static const struct { const char *suffix; uint64_t mul; } sfx[] = {
            {"B", 1}, {"K", 1ULL << 10}, {"KiB", 1ULL << 10}, {"k", 1ULL << 10}, {"KB", 1000}, {"kB", 1000},
            {"M", 1ULL << 20}, {"MiB", 1ULL << 20}, {"MB", 1000000}, {"G", 1ULL << 30}, {"GiB", 1ULL << 30},
            {"GB", 1000000000},
        };
        mul = 0;
        for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++)
            if (strcmp(end, sfx[i].suffix) == 0) mul = sfx[i].mul;
        if (!mul) return -1;
    }
    if (v > UINT64_MAX / mul) return -1;
    *out = v * mul;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') return -1;
    *out = v;
    return 0;
}

/* The output path as stored in the region: relative to the shared dir when it lies under it (so the
   receiver resolves it against its own --shared-dir), else absolute. */
static void store_output_path(const char *output, const char *shared, char *out, size_t cap, int *relative) {
    char dir[PATH_MAX], rdir[PATH_MAX], rshared[PATH_MAX];
    const char *base = strrchr(output, '/');
    if (base) {
        size_t dl = (size_t)(base - output);
        if (dl == 0) dl = 1;
        if (dl >= sizeof dir) die("output path too long");
        memcpy(dir, output, dl);
        dir[dl] = '\0';
        base++;
    } else {
        snprintf(dir, sizeof dir, ".");
        base = output;
    }
    if (!*base) die("--output %s names a directory", output);
    if (!realpath(dir, rdir)) die("--output %s: directory %s: %s", output, dir, strerror(errno));
    *relative = 0;
    if (shared && realpath(shared, rshared)) {
        size_t n = strlen(rshared);
        if (strcmp(rdir, rshared) == 0) { snprintf(out, cap, "%s", base); *relative = 1; return; }
        if (strncmp(rdir, rshared, n) == 0 && rdir[n] == '/') {
            if ((size_t)snprintf(out, cap, "%s/%s", rdir + n + 1, base) >= cap) die("output path too long");
            *relative = 1;
            return;
        }
    }
    if ((size_t)snprintf(out, cap, "%s/%s", strcmp(rdir, "/") ? rdir : "", base) >= cap) die("output path too long");
}

static void resolve_output_path(const wf_root *r, const char *shared, char *out, size_t cap) {
    if (r->output_relative) {
        if (!shared) die("the output path is relative to the shared dir, and there is none");
        snprintf(out, cap, "%s/%s", shared, r->output);
    } else {
        snprintf(out, cap, "%s", r->output);
    }
}

static void sleep_us(uint64_t us) {
    if (!us) return;
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* The loop every mode runs: steps, safe points, then the result. */
static int run(wf_root *r, const char *output_path) {
    uint64_t every = r->steps_total >= 10 ? r->steps_total / 10 : 1;
    while (r->step < r->steps_total) {
        do_step(r);
        if (r->step % every == 0 && r->step < r->steps_total)
            fprintf(stderr, "wordfreq: step %" PRIu64 "/%" PRIu64 ", %" PRIu64 " entries\n", r->step, r->steps_total,
                    r->nentries);
        if (g_f) {
            uint64_t step = r->step;
            int rc = ferry_safe_point(g_f);
            if (rc == FERRY_MOVED) { /* the region is not ours any more: do not touch it */
                fprintf(stderr, "wordfreq: moved away after step %" PRIu64 "; exiting\n", step);
                int crc = ferry_close(g_f);
                if (crc < 0) die_ferry("ferry_close", crc);
                exit(0);
            }
            if (rc == FERRY_STOPPED) {
                fprintf(stderr, "wordfreq: stopped by `ferry stop` after step %" PRIu64 "\n", step);
                int crc = ferry_close(g_f);
                if (crc < 0) die_ferry("ferry_close", crc);
                exit(0);
            }
            if (rc < 0) die_ferry("ferry_safe_point", rc);
        }
        sleep_us(r->step_delay_us);
    }
    static char result[8192];
    size_t n = format_result(r, result, sizeof result);
    write_file(output_path, result, n);
    fwrite(result, 1, n, stdout);
    fflush(stdout);
    if (g_f) {
        fprintf(stderr, "wordfreq: done after %" PRIu64 " steps (generation %" PRIu64 ", %" PRIu64 " safe points)\n",
                r->step, ferry_generation(g_f), ferry_steps(g_f));
        int rc = ferry_close(g_f);
        g_f = NULL;
        if (rc < 0) die_ferry("ferry_close", rc);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    int is_start = strcmp(mode, "start") == 0, is_receive = strcmp(mode, "receive") == 0,
        is_plain = strcmp(mode, "plain") == 0;
    if (!is_start && !is_receive && !is_plain) usage();

    /* Ferry's own allocator metadata and our entries hold no pointers outside the region, but the layout
       check costs nothing and keeps the rule simple. */
    if (!is_plain) {
        int rc = ferry_fixed_layout(argc, argv);
        if (rc < 0) die_ferry("ferry_fixed_layout", rc);
    }

    const char *output = NULL, *shared = NULL, *control = NULL, *listen = NULL;
    uint64_t steps = 0, region = 0, delay = 200;
    int have_steps = 0;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (i + 1 >= argc) { fprintf(stderr, "wordfreq: %s needs a value\n", o); usage(); }
        const char *v = argv[++i];
        if (strcmp(o, "--steps") == 0 && !is_receive) {
            if (parse_u64(v, &steps) != 0) die("--steps: not a number: %s", v);
            have_steps = 1;
        } else if (strcmp(o, "--output") == 0 && !is_receive) output = v;
        else if (strcmp(o, "--shared-dir") == 0 && !is_plain) shared = v;
        else if (strcmp(o, "--control") == 0 && !is_plain) control = v;
        else if (strcmp(o, "--listen") == 0 && is_receive) listen = v;
        else if (strcmp(o, "--region-size") == 0 && is_start) {
            if (parse_size(v, &region) != 0) die("--region-size: not a size: %s", v);
        } else if (strcmp(o, "--step-delay-us") == 0 && is_start) {
            if (parse_u64(v, &delay) != 0) die("--step-delay-us: not a number: %s", v);
        } else { fprintf(stderr, "wordfreq: unknown option for %s: %s\n", mode, o); usage(); }
    }

    if (is_plain) {
        if (!have_steps || !output) usage();
        A = &libc_allocator;
        wf_root *r = new_root(steps, 0, output, 0);
        return run(r, output);
    }

    if (!shared || !control) usage();
    ferry_options o;
    memset(&o, 0, sizeof o);
    o.name = WF_NAME;
    o.shared_dir = shared;
    o.control = control;
    char path[PATH_MAX + 64];

    if (is_start) {
        if (!have_steps || !output) usage();
        if (region) {
            long page = sysconf(_SC_PAGESIZE);
            region = (region + (uint64_t)page - 1) / (uint64_t)page * (uint64_t)page;
        }
        o.size = (size_t)region;
        char stored[PATH_MAX];
        int relative;
        store_output_path(output, shared, stored, sizeof stored, &relative);
        int rc = ferry_start(&o, &g_f);
        if (rc < 0) die_ferry("ferry_start", rc);
        A = &ferry_allocator;
        wf_root *r = new_root(steps, delay, stored, relative);
        ferry_set_root(g_f, r);
        ferry_on_verify(g_f, verify, r);
        resolve_output_path(r, shared, path, sizeof path);
        fprintf(stderr, "wordfreq: started (generation %" PRIu64 "), %" PRIu64 " steps, control %s\n",
                ferry_generation(g_f), steps, control);
        return run(r, path);
    }

    /* receive */
    if (!listen) usage();
    o.listen = listen;
    fprintf(stderr, "wordfreq: waiting for a migration on %s\n", listen);
    ferry_t *f = NULL;
    int rc = ferry_receive(&o, &f);
    if (rc == FERRY_STOPPED) {
        fprintf(stderr, "wordfreq: stopped by `ferry stop` before any migration arrived\n");
        if (f) ferry_close(f);
        return 0;
    }
    if (rc < 0) die_ferry("ferry_receive", rc);
    g_f = f;
    A = &ferry_allocator;
    wf_root *r = ferry_root(f);
    if (!r || !in_region(r, sizeof *r) || r->magic != WF_MAGIC || r->version != WF_VERSION)
        die("the received region does not hold a wordfreq state (root %p)", (void *)r);
    ferry_on_verify(f, verify, r);
    resolve_output_path(r, shared, path, sizeof path);
    fprintf(stderr, "wordfreq: received at step %" PRIu64 "/%" PRIu64 " (generation %" PRIu64 ")\n", r->step,
            r->steps_total, ferry_generation(f));
    return run(r, path);
}
