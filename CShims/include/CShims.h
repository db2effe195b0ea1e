// CShims: what Swift cannot express on its own.
//
// - wrappers for variadic calls (`syscall`, `ioctl`) and for ioctl numbers built by function-like macros;
// - uapi definitions newer than the system headers (they are from Linux 6.1, the kernel is newer);
// - HMAC-SHA-256, constant-time comparison and random bytes from the system libcrypto (OpenSSL 3), for
//   the peer authentication of FerryAuth (the OpenSSL headers stay in crypto.c, out of this header);
// - the two fault handlers of the write trackers (the SIGSEGV handler of the mprotect backend and the
//   handler loop of the synchronous userfaultfd backend), which must be C: async-signal-safe and lock-free;
// - the region digest's page hash (digest.c), which needs SIMD intrinsics and run-time CPU dispatch.
//
// Rule (as in swift-subprocess's shims): a wrapper returns the libc result unchanged and leaves errno
// alone. Error mapping, allocation and policy live in Swift.
#ifndef CSHIMS_H
#define CSHIMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>  // must precede linux/userfaultfd.h
#include <linux/userfaultfd.h>
#include <linux/fs.h>

// MARK: - uapi newer than the 6.1 headers (values from the kernel's userfaultfd.h and fs.h)

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
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)

/// One run of pages reported by PAGEMAP_SCAN: [start, end) in bytes, and the categories they share.
struct page_region {
    __u64 start;
    __u64 end;
    __u64 categories;
};

/// The argument of the PAGEMAP_SCAN ioctl on /proc/PID/pagemap.
struct pm_scan_arg {
    __u64 size;
    __u64 flags;
    __u64 start;
    __u64 end;
    __u64 walk_end;
    __u64 vec;
    __u64 vec_len;
    __u64 max_pages;
    __u64 category_inverted;
    __u64 category_mask;
    __u64 category_anyof_mask;
    __u64 return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

_Static_assert(sizeof(struct page_region) == 24, "page_region must match the kernel's uapi");
_Static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg must match the kernel's uapi");

// MARK: - ioctl numbers (function-like macros Swift cannot import)

extern const unsigned long CShims_UFFDIO_API;
extern const unsigned long CShims_UFFDIO_REGISTER;
extern const unsigned long CShims_UFFDIO_UNREGISTER;
extern const unsigned long CShims_UFFDIO_WRITEPROTECT;
extern const unsigned long CShims_UFFDIO_COPY;
extern const unsigned long CShims_UFFDIO_ZEROPAGE;
extern const unsigned long CShims_UFFDIO_WAKE;
extern const unsigned long CShims_PAGEMAP_SCAN;
/// Bit of `uffdio_register.ioctls` saying UFFDIO_WRITEPROTECT is available on the registered range.
extern const unsigned long long CShims_UFFDIO_WRITEPROTECT_AVAILABLE;

// MARK: - Variadic calls

/// `syscall(SYS_userfaultfd, flags)`.
int CShims_userfaultfd(int flags);
/// `ioctl(fd, request, arg)` with a pointer argument.
int CShims_ioctl(int fd, unsigned long request, void *arg);

// MARK: - Dirty bitmaps shared between a fault handler and the collector

/// Atomically sets bit `index` (acquire-release).
static inline void CShims_bitmap_set(uint64_t *words, size_t index) {
    __atomic_fetch_or(&words[index >> 6], (uint64_t)1 << (index & 63), __ATOMIC_ACQ_REL);
}

/// Atomically replaces a word with zero and returns what it held.
static inline uint64_t CShims_bitmap_take_word(uint64_t *words, size_t word) {
    return __atomic_exchange_n(&words[word], (uint64_t)0, __ATOMIC_ACQ_REL);
}

/// Atomically reads a word.
static inline uint64_t CShims_bitmap_load_word(const uint64_t *words, size_t word) {
    return __atomic_load_n(&words[word], __ATOMIC_ACQUIRE);
}

// MARK: - mprotect backend: the SIGSEGV handler
//
// A fixed table of tracked ranges, read lock-free by the handler. On a write fault (SEGV_ACCERR) at an
// address inside an armed range, the handler makes that page writable and then sets its dirty bit
// (in that order, so a concurrent collector that re-protects first never leaves a written page
// unprotected and unreported). Each page un-protected alone can split a VMA in three, and
// vm.max_map_count is shared by the whole process (malloc and thread stacks need maps too), so past
// `split_budget` pages per round, or if un-protecting one page fails (ENOMEM), the handler makes the
// whole range writable and marks it overflowed: the next collect reports every page. Any other fault chains to the handler that was installed before ours,
// or, if that was the default, restores the default and returns so the real crash happens.

enum { CSHIMS_SEGV_SLOTS = 16 };

/// Installs the SIGSEGV handler once per process (later calls do nothing). Returns 0 or -1 with errno.
int CShims_segv_install(void);
/// Publishes a tracked range; returns its slot, or -1 if the table is full. `bitmap` holds one bit per
/// page and must outlive the slot. The range starts disarmed.
int CShims_segv_add(uintptr_t base, size_t length, unsigned page_shift, uint64_t *bitmap,
                    uint64_t split_budget);
/// Restarts the count of pages un-protected one by one (after the collector re-protected them).
void CShims_segv_reset_budget(int slot);
/// Arms or disarms a slot (the caller changes the page protection itself).
void CShims_segv_set_armed(int slot, bool armed);
/// Returns whether the slot overflowed since the last call, and clears the flag.
bool CShims_segv_take_overflow(int slot);
/// Unpublishes a slot and waits until no handler is still reading it.
void CShims_segv_remove(int slot);
/// Number of faults the handler resolved for a slot (for statistics).
uint64_t CShims_segv_fault_count(int slot);

// MARK: - uffd-sync backend: the handler loop

/// Serves write-protect faults of `uffd` until `stop_fd` becomes readable: for each fault at an address
/// inside [base, base + length) it removes the protection of that page (which wakes the faulting
/// thread) and then sets the page's bit in `bitmap`. Returns 0 when stopped, or -1 with errno when a
/// call failed (the loop then stops; faulting threads are woken when the caller closes `uffd`).
///
/// `counters[0]` (started) is incremented before a fault's writer is woken and `counters[1]` (resolved)
/// after its bit is set. A writer's write can complete before its bit is set, so a collector first waits
/// until resolved reaches the started value it read: then every write completed before it began is in
/// the bitmap.
int CShims_uffd_wp_serve(int uffd, int stop_fd, uintptr_t base, size_t length, unsigned page_shift,
                         uint64_t *bitmap, uint64_t *counters);

// MARK: - Missing-page faults (post-copy destination)

/// Waits for the next missing-page fault of `uffd` until `stop_fd` becomes readable. Returns 1 with the
/// faulting address in `*address`, 0 when stopped, -1 with errno when a call failed.
int CShims_uffd_next_fault(int uffd, int stop_fd, uint64_t *address);

/// Installs `length` bytes from `source` at `destination` atomically per page (`UFFDIO_COPY`) and wakes the
/// threads blocked there. Returns 0, or -errno: -EEXIST when a page there is already present (the pages
/// before it are installed, `*copied` bytes of them; the present one is left as it is, and the caller wakes
/// its waiters with `CShims_uffd_wake`).
int CShims_uffd_copy(int uffd, uintptr_t destination, const void *source, size_t length, size_t *copied);

/// Installs zero pages at `destination` (`UFFDIO_ZEROPAGE`) and wakes the waiters; 0 or -errno as above.
int CShims_uffd_zeropage(int uffd, uintptr_t destination, size_t length);

/// Wakes the threads blocked on faults in the range (`UFFDIO_WAKE`); 0 or -errno.
int CShims_uffd_wake(int uffd, uintptr_t start, size_t length);

// MARK: - Authentication (libcrypto, in crypto.c)

/// HMAC-SHA-256 of `data` under `key`, written to `out`: OpenSSL's one-shot `HMAC(EVP_sha256(), ...)`.
/// Returns 0 on success, -1 on failure (a key longer than INT_MAX bytes, or libcrypto failed).
int CShims_hmac_sha256(const void *key, size_t key_len, const void *data, size_t data_len, uint8_t out[32]);

/// Compares `n` bytes of `a` and `b` in time that does not depend on their content: `CRYPTO_memcmp`.
/// Returns 1 when they are equal, 0 when they differ.
int CShims_constant_time_equal(const void *a, const void *b, size_t n);

/// Fills `buf` with `n` bytes from the cryptographically secure generator: `RAND_bytes`.
/// Returns 0 on success, -1 on failure (`n` over INT_MAX, or the generator could not be seeded).
int CShims_random_bytes(void *buf, size_t n);

#endif  // CSHIMS_H

// MARK: - Loaded objects and personality (ProcessImage in FerrySystem)
//
// <link.h> declares dl_iterate_phdr and struct dl_phdr_info only under _GNU_SOURCE, and Swift's Glibc
// module includes neither <sys/personality.h> nor <sys/auxv.h>: so these three calls go through here.
#ifndef CSHIMS_PROCESS_IMAGE_H
#define CSHIMS_PROCESS_IMAGE_H

/// Called once per loaded object by `CShims_dl_iterate_phdr`, with the fields of `struct dl_phdr_info`:
/// `name` is `dlpi_name` (empty for the main program), `load_bias` is `dlpi_addr`, `phdrs` points to
/// `phnum` program headers (`ElfW(Phdr)`). A non-zero result stops the iteration.
typedef int (*CShims_loaded_object_callback)(const char *name, uintptr_t load_bias, const void *phdrs,
                                              uint16_t phnum, void *context);

/// `dl_iterate_phdr(3)`: calls `callback` on the calling thread for each loaded object, main program
/// first, holding the dynamic loader's lock (the callback must not load or unload objects). Returns the
/// last callback's result.
int CShims_dl_iterate_phdr(CShims_loaded_object_callback callback, void *context);

/// `personality(2)` (glibc's wrapper): sets the execution domain, or only reads it for 0xffffffff.
/// Returns the previous persona, or -1 with errno.
int CShims_personality(unsigned long persona);

/// `getauxval(3)`: the value of an auxiliary vector entry (`AT_SYSINFO_EHDR`, `AT_SECURE`), 0 if absent.
unsigned long CShims_getauxval(unsigned long type);

#endif  // CSHIMS_PROCESS_IMAGE_H

// AES-256-GCM for sealed frames.
#include "CShimsAEAD.h"
// The page hash of the region digest (SIMD, chosen at run time; every path gives the same bits).
#include "CShimsDigest.h"
// zstd, lz4 and the page delta, for compression on slow links.
#include "CShimsPageCoding.h"

// MARK: - Control socket peer and key fingerprint (ControlChannel in FerryMigration, PresharedKey in FerryAuth)
//
// Swift's Glibc module declares `struct ucred` only under _GNU_SOURCE, which it is not built with; the
// SHA-256 is libcrypto's (the OpenSSL headers stay in the .c file).
#ifndef CSHIMS_PEER_H
#define CSHIMS_PEER_H

/// `getsockopt(fd, SOL_SOCKET, SO_PEERCRED)`: the pid, uid and gid of the process at the other end of a
/// connected Unix socket, as the kernel recorded them when it connected. Returns 0, or -1 with errno.
int CShims_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// `getsockopt(fd, IPPROTO_TCP, TCP_INFO)`'s `tcpi_bytes_acked`: the bytes of the stream the peer acknowledged,
/// which grows at the link's pace whatever the socket's buffer holds. 0 on success, -1 with errno set (or when
/// the kernel's `tcp_info` is too old to have the field).
int CShims_tcp_bytes_acked(int fd, uint64_t *acknowledged);

/// SHA-256 of `length` bytes at `data` into `out`: libcrypto's `EVP_Digest(..., EVP_sha256(), NULL)`.
/// Returns 0 on success, -1 if libcrypto failed.
int CShims_sha256(const void *data, size_t length, uint8_t out[32]);

#endif  // CSHIMS_PEER_H

// MARK: - Lease watchdog (MigrationAgent in FerryMigration)
//
// A child process, because a watchdog must run when its owner does not (stopped by SIGSTOP, frozen, hung in
// the kernel): like sanlock's, it kills the owner when the owner stops proving that it renewed its lease. It
// must be C: between fork and exit the child of a multithreaded process may only make async-signal-safe calls.
#ifndef CSHIMS_WATCHDOG_H
#define CSHIMS_WATCHDOG_H

/// Forks the watchdog of process `owner` (the caller). It keeps `commands`, the read end of a pipe whose write
/// (or socket pair) end `write_end` only the owner keeps, closes every other descriptor but standard error, and reads commands:
/// 'a' arms it, or re-arms it, so that the next command must come within `deadline_ms`; 'd' disarms it. If the
/// deadline passes while it is armed, it writes `message` to standard error and kills the owner with SIGKILL
/// (which ends a stopped process too), then exits 1. At end of file (the owner exited) it exits 0.
/// Returns the child's pid to the owner, or -1 with errno.
int CShims_watchdog_start(int commands, int write_end, int owner, int deadline_ms, const char *message);

#endif  // CSHIMS_WATCHDOG_H
