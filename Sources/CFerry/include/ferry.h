/*
 * ferry.h — make your own program's state live-migratable with Ferry.
 *
 * Keep the state you want to move in a region that Ferry maps at a fixed address (allocate it with
 * ferry_alloc, point to it from ferry_root), call ferry_safe_point between units of work, and start the
 * same build of the program on the destination with ferry_receive. Then
 *     ferry migrate --control SOCK --to HOST:PORT
 * moves it live: the source pauses at a safe point, the destination maps the region at the same address
 * and its ferry_receive returns with the region as the source left it. ferry status, ferry verify and
 * ferry stop work on the control socket too.
 *
 * Build (see the README):  cc prog.c -I<ferry>/Sources/CFerry/include -L<bin> -lFerry -Wl,-rpath,<bin>
 * where <bin> is `swift build -c release --show-bin-path`.
 *
 * Threads. One thread calls ferry_safe_point: the safe-point thread. Ferry pauses the workload only while
 * that thread is inside ferry_safe_point, so every write to the region must come from that thread, or from
 * threads that are idle (not touching the region) whenever it is inside ferry_safe_point. The allocator
 * functions may be called from any thread (they take a lock), under the same rule. Other threads may do
 * anything that does not touch the region. The flush and verify callbacks run while the safe-point thread
 * waits inside ferry_safe_point: flush on that thread, verify on a Ferry thread; neither may call
 * ferry_safe_point. Ferry's own threads (control socket, migration, ownership lease, lease enforcer) never
 * touch your program's memory outside the region.
 *
 * Lease. While the workload runs here, Ferry renews its lease on the shared mount every I/O timeout T
 * (environment FERRY_IO_TIMEOUT in seconds, default 2). If no renewal succeeds for 6T (the shared mount is
 * gone, read-only or hung), Ferry kills the process (SIGKILL), as sanlock does: another host may take the
 * workload over after seeing the lease unchanged for 8T, and two owners must never run.
 *
 * Pointers. Pointers inside the region stay valid after a move (same address). Pointers from the region
 * to anything outside it (function pointers, library data, malloc'd memory) stay valid only if both
 * hosts load the program and its libraries at the same addresses: call ferry_fixed_layout first thing
 * in main, and the destination refuses a different layout. File descriptors, sockets and threads do not
 * move: reopen them after ferry_receive returns (files on the shared mount are the same files).
 */
#ifndef FERRY_H
#define FERRY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** One migratable workload of this process: its region, its control socket, its ownership. */
typedef struct ferry ferry_t;

/** How to start or receive a workload. Zero every field you do not set (a zeroed field means the default);
    fields may be added at the end in later versions. */
typedef struct ferry_options {
    const char *name;       /* the program's workload name, stored in the region header (1-31 bytes) */
    uintptr_t   base;       /* region address; 0 = Ferry's default (0x7e0000000000) */
    size_t      size;       /* region bytes (a multiple of the page size); 0 = 64 MiB. ferry_receive: ignored */
    const char *shared_dir; /* the shared mount: ownership record, claims, key (required) */
    const char *control;    /* control socket: ferry status|verify|stop|migrate --control PATH (required) */
    const char *listen;     /* ferry_receive only: ADDR:PORT on the migration network (required there) */
    const char *key;        /* NULL: <shared_dir>/ferry.key, created 0600 by ferry_start if absent */
    const char *next_key;   /* ferry_receive only: also accept sources holding this key (key rotation) */
    size_t      reserve;    /* ferry_receive only: standby; map and populate this many bytes at base before any
                               migration arrives, so the move needs no set-up (a region at another base or larger
                               is refused); 0 = map each region when it arrives, populating it alongside the stream */
} ferry_options;

/** ferry_safe_point's answers. */
enum {
    FERRY_CONTINUE = 0, /* go on with the next unit of work */
    FERRY_MOVED = 1,    /* the workload now runs elsewhere: ferry_close and exit without touching the region */
    FERRY_STOPPED = 2   /* `ferry stop` asked this workload to end (files flushed): ferry_close and exit */
};

/** Errors: negative return values. ferry_strerror(code) names the cause and the fix; ferry_last_error()
    gives the details of the last failure on the calling thread (which file, which figures). */
enum {
    FERRY_E_INVALID = -1,   /* an option is missing or malformed */
    FERRY_E_SYSTEM = -2,    /* a system call failed */
    FERRY_E_MEMORY = -3,    /* the region is larger than the memory this host can give it */
    FERRY_E_ADDRESS = -4,   /* the region's address range is already in use in this process */
    FERRY_E_SHARED = -5,    /* the shared directory is missing, unwritable, or its files are unreadable */
    FERRY_E_OWNED = -6,     /* the shared directory already holds a workload */
    FERRY_E_KEY = -7,       /* the pre-shared key file is unusable */
    FERRY_E_LISTEN = -8,    /* cannot listen on the migration address */
    FERRY_E_FENCED = -9,    /* another process owns the workload now; stop without touching the region */
    FERRY_E_STATE = -10,    /* the call does not fit the workload's state (e.g. after it moved away) */
    FERRY_E_CORRUPT = -11   /* the region's header or heap is damaged */
};

/** Starts a fresh workload: maps a zeroed region of o->size bytes at o->base, claims generation 1 on the
    shared mount, serves the control socket. Returns 0 and *out, or a negative error (nothing is left
    mapped or claimed). A region larger than the memory available is refused (FERRY_E_MEMORY). */
int ferry_start(const ferry_options *o, ferry_t **out);

/** Waits on o->listen for a migration of the workload named o->name and returns once it was committed
    here: the region is mapped at the source's address with the source's contents, this process owns the
    next generation, and the program continues from ferry_root. Serves the control socket meanwhile
    (`ferry stop` makes it return FERRY_STOPPED with *out = NULL: nothing to close, just exit). A failed
    attempt is logged to stderr and the next one awaited. Callbacks (ferry_on_flush, ferry_on_verify) belong
    to a process: register them again after ferry_receive. Pointers to things outside the region that the
    program keeps in it (a FILE *, an fd, a ferry_t *) are the old process's: reopen and replace them. */
int ferry_receive(const ferry_options *o, ferry_t **out);

/** The safe point. Returns FERRY_CONTINUE at once while no migration is pausing; when one is, calls the
    flush callback, blocks until the handoff is decided, and returns FERRY_CONTINUE (the workload stays
    here) or FERRY_MOVED. FERRY_STOPPED after `ferry stop`; FERRY_E_FENCED if another process took the
    workload over. Call it from one thread only. */
int ferry_safe_point(ferry_t *f);

/** The region's allocator: every byte of its metadata lives in the region, so pointers it returns stay
    valid after a move. 16-byte aligned. NULL when the region is full (nothing else changes).
    ferry_realloc(f, NULL, n) allocates; ferry_realloc(f, p, 0) frees and returns NULL; a realloc that
    cannot grow returns NULL and leaves p valid (shrinking always succeeds, in place). ferry_free(f, NULL)
    does nothing; freeing anything else that is not a live block stops the process with a message. */
void *ferry_alloc(ferry_t *f, size_t n);
void *ferry_realloc(ferry_t *f, void *p, size_t n);
void  ferry_free(ferry_t *f, void *p);

/** The program's root pointer, kept in the region header: set it once the state is built, read it after
    ferry_receive. NULL until set. */
void *ferry_root(ferry_t *f);
void  ferry_set_root(ferry_t *f, void *p);

/** Called at the safe point before the workload pauses for a migration or a stop: make files durable
    (fsync). Return 0, or non-zero to report a failure (the migration then fails and the workload stays). */
void  ferry_on_flush(ferry_t *f, int (*flush)(void *ctx), void *ctx);

/** Called by `ferry verify` while the workload waits at a safe point: check the program's invariants,
    write a one-line finding into detail (cap bytes, at most 1023, NUL-terminated), return 0 if they hold.
    Ferry's own checks (header, heap, root) run as well. */
void  ferry_on_verify(ferry_t *f, int (*verify)(void *ctx, char *detail, size_t cap), void *ctx);

/** The ownership generation this process holds (1 after ferry_start, +1 per move). */
uint64_t    ferry_generation(ferry_t *f);

/** Safe points passed so far, across every host (kept in the region). */
uint64_t    ferry_steps(ferry_t *f);

/** Start and end of the region (for programs that check their own pointers). */
void       *ferry_region_base(ferry_t *f);
size_t      ferry_region_size(ferry_t *f);

/** What an error code means, and what to do about it. Never NULL. */
const char *ferry_strerror(int code);

/** The last error on the calling thread, in full (what failed, with which figures); "" if none. */
const char *ferry_last_error(void);

/** Ends Ferry's part: stops the control socket and the lease renewal, and releases the region (after
    FERRY_MOVED or FERRY_STOPPED, without calling the flush callback: the files belong to the new owner).
    Called while the workload still runs here (the program finished), it calls the flush callback and keeps
    the ownership record naming this process (the workload ends here). Returns 0 or a negative error; f is
    freed either way. */
int   ferry_close(ferry_t *f);

/** Re-executes the program with address-space randomisation off when it is on, so that both hosts load
    the program and its libraries at the same addresses; returns 0 once it is off (or a negative error,
    with errno's cause in ferry_last_error). Call it first in main, with main's argc and argv. The hello
    then tells the destination to refuse a process whose load addresses differ. */
int   ferry_fixed_layout(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_H */
