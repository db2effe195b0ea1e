#ifndef _GNU_SOURCE
#error "CShims must be built with _GNU_SOURCE (set in Package.swift's cSettings)"
#endif

#include "CShims.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

const unsigned long CShims_UFFDIO_API = UFFDIO_API;
const unsigned long CShims_UFFDIO_REGISTER = UFFDIO_REGISTER;
const unsigned long CShims_UFFDIO_UNREGISTER = UFFDIO_UNREGISTER;
const unsigned long CShims_UFFDIO_WRITEPROTECT = UFFDIO_WRITEPROTECT;
const unsigned long CShims_UFFDIO_COPY = UFFDIO_COPY;
const unsigned long CShims_UFFDIO_ZEROPAGE = UFFDIO_ZEROPAGE;
const unsigned long CShims_UFFDIO_WAKE = UFFDIO_WAKE;
const unsigned long CShims_PAGEMAP_SCAN = PAGEMAP_SCAN;
const unsigned long long CShims_UFFDIO_WRITEPROTECT_AVAILABLE = (1ULL << _UFFDIO_WRITEPROTECT);

int CShims_userfaultfd(int flags) { return (int)syscall(SYS_userfaultfd, flags); }

int CShims_ioctl(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

// MARK: - mprotect backend
//
// Everything below runs inside a signal handler: only atomics and async-signal-safe syscalls
// (mprotect, sigaction), no locks, no allocation, errno saved and restored.

struct segv_slot {
    uintptr_t base;  // 0 = free; published last (release), read first (acquire)
    size_t length;
    unsigned page_shift;
    uint64_t *bitmap;
    int armed;
    int overflow;
    uint64_t faults;
    uint64_t unprotected;  // pages un-protected one by one since the last collect
    uint64_t budget;       // beyond this many, fall back to the whole range
};

static struct segv_slot slots[CSHIMS_SEGV_SLOTS];
static int slot_claimed[CSHIMS_SEGV_SLOTS];
static int handlers_running;
static struct sigaction previous_action;
static int install_state;  // 0 none, 1 installing, 2 installed

static void chain_to_previous(int sig, siginfo_t *info, void *context) {
    if (previous_action.sa_flags & SA_SIGINFO) {
        if ((void *)previous_action.sa_sigaction != (void *)SIG_DFL &&
            (void *)previous_action.sa_sigaction != (void *)SIG_IGN) {
            previous_action.sa_sigaction(sig, info, context);
            return;
        }
    } else if (previous_action.sa_handler != SIG_DFL && previous_action.sa_handler != SIG_IGN) {
        previous_action.sa_handler(sig);
        return;
    }
    // Nobody else handles it: restore the default and return, so the faulting instruction runs again
    // and the process dies of the real SIGSEGV.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGSEGV, &dfl, NULL);
}

static bool is_write_fault(void *context) {
#if defined(__x86_64__)
    const ucontext_t *uc = (const ucontext_t *)context;
    return (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;  // page-fault error code bit 1: write access
#else
    (void)context;
    return true;  // a protection fault on a PROT_READ page can only be a write (or an exec)
#endif
}

static void segv_handler(int sig, siginfo_t *info, void *context) {
    int saved_errno = errno;
    bool handled = false;
    if (info->si_code == SEGV_ACCERR && is_write_fault(context)) {
        uintptr_t address = (uintptr_t)info->si_addr;
        __atomic_fetch_add(&handlers_running, 1, __ATOMIC_ACQ_REL);
        for (int i = 0; i < CSHIMS_SEGV_SLOTS && !handled; i++) {
            struct segv_slot *slot = &slots[i];
            uintptr_t base = __atomic_load_n(&slot->base, __ATOMIC_ACQUIRE);
            if (base == 0 || address < base || address - base >= slot->length) continue;
            if (!__atomic_load_n(&slot->armed, __ATOMIC_ACQUIRE)) continue;
            size_t page = (address - base) >> slot->page_shift;
            void *page_address = (void *)(base + (page << slot->page_shift));
            bool within_budget =
                __atomic_add_fetch(&slot->unprotected, 1, __ATOMIC_ACQ_REL) <= slot->budget;
            if (within_budget &&
                mprotect(page_address, (size_t)1 << slot->page_shift, PROT_READ | PROT_WRITE) == 0) {
                CShims_bitmap_set(slot->bitmap, page);  // after un-protecting: see the header
                handled = true;
            } else if (mprotect((void *)base, slot->length, PROT_READ | PROT_WRITE) == 0) {
                // Stays armed: the collector re-protects the whole range and faults resume.
                __atomic_store_n(&slot->overflow, 1, __ATOMIC_RELEASE);
                handled = true;
            }
            if (handled) __atomic_fetch_add(&slot->faults, 1, __ATOMIC_RELAXED);
        }
        __atomic_fetch_sub(&handlers_running, 1, __ATOMIC_ACQ_REL);
    }
    if (!handled) chain_to_previous(sig, info, context);
    errno = saved_errno;
}

int CShims_segv_install(void) {
    int expected = 0;
    if (!__atomic_compare_exchange_n(&install_state, &expected, 1, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(&install_state, __ATOMIC_ACQUIRE) == 1) {
        }
        return 0;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = segv_handler;
    action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, &previous_action) != 0) {
        int saved = errno;
        __atomic_store_n(&install_state, 0, __ATOMIC_RELEASE);
        errno = saved;
        return -1;
    }
    __atomic_store_n(&install_state, 2, __ATOMIC_RELEASE);
    return 0;
}

int CShims_segv_add(uintptr_t base, size_t length, unsigned page_shift, uint64_t *bitmap,
                    uint64_t split_budget) {
    for (int i = 0; i < CSHIMS_SEGV_SLOTS; i++) {
        int expected = 0;
        if (!__atomic_compare_exchange_n(&slot_claimed[i], &expected, 1, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        struct segv_slot *slot = &slots[i];
        slot->length = length;
        slot->page_shift = page_shift;
        slot->bitmap = bitmap;
        slot->budget = split_budget;
        __atomic_store_n(&slot->unprotected, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&slot->armed, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&slot->overflow, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&slot->faults, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&slot->base, base, __ATOMIC_RELEASE);
        return i;
    }
    return -1;
}

void CShims_segv_set_armed(int slot, bool armed) {
    __atomic_store_n(&slots[slot].armed, armed ? 1 : 0, __ATOMIC_RELEASE);
}

void CShims_segv_reset_budget(int slot) {
    __atomic_store_n(&slots[slot].unprotected, 0, __ATOMIC_RELEASE);
}

bool CShims_segv_take_overflow(int slot) {
    return __atomic_exchange_n(&slots[slot].overflow, 0, __ATOMIC_ACQ_REL) != 0;
}

uint64_t CShims_segv_fault_count(int slot) {
    return __atomic_load_n(&slots[slot].faults, __ATOMIC_ACQUIRE);
}

void CShims_segv_remove(int slot) {
    __atomic_store_n(&slots[slot].armed, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&slots[slot].base, 0, __ATOMIC_RELEASE);
    while (__atomic_load_n(&handlers_running, __ATOMIC_ACQUIRE) != 0) {
    }
    __atomic_store_n(&slot_claimed[slot], 0, __ATOMIC_RELEASE);
}

// MARK: - uffd-sync backend

/// Waits until `uffd` has messages (1) or `stop_fd` became readable (0); -1 with errno when polling failed.
static int uffd_wait(int uffd, int stop_fd) {
    struct pollfd fds[2] = {{.fd = uffd, .events = POLLIN}, {.fd = stop_fd, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (fds[1].revents) return 0;
        if (fds[0].revents & (POLLERR | POLLHUP)) {
            errno = EPIPE;
            return -1;
        }
        return 1;
    }
}

int CShims_uffd_wp_serve(int uffd, int stop_fd, uintptr_t base, size_t length, unsigned page_shift,
                         uint64_t *bitmap, uint64_t *counters) {
    struct uffd_msg messages[16];
    for (;;) {
        int ready = uffd_wait(uffd, stop_fd);
        if (ready <= 0) return ready;
        ssize_t got = read(uffd, messages, sizeof messages);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return -1;
        }
        size_t count = (size_t)got / sizeof(struct uffd_msg);
        for (size_t i = 0; i < count; i++) {
            if (messages[i].event != UFFD_EVENT_PAGEFAULT) continue;
            uintptr_t address = (uintptr_t)messages[i].arg.pagefault.address;
            if (address < base || address - base >= length) continue;
            size_t page = (address - base) >> page_shift;
            __atomic_fetch_add(&counters[0], 1, __ATOMIC_ACQ_REL);  // started: before the writer can go on
            struct uffdio_writeprotect unprotect = {
                .range = {.start = base + (page << page_shift), .len = (size_t)1 << page_shift},
                .mode = 0,  // clear WP and wake the faulting thread
            };
            while (ioctl(uffd, UFFDIO_WRITEPROTECT, &unprotect) != 0) {
                if (errno != EAGAIN && errno != EINTR) return -1;
            }
            CShims_bitmap_set(bitmap, page);  // after un-protecting, as in the SIGSEGV handler
            __atomic_fetch_add(&counters[1], 1, __ATOMIC_ACQ_REL);  // resolved: the bit is set
        }
    }
}

// MARK: - Missing-page faults

int CShims_uffd_next_fault(int uffd, int stop_fd, uint64_t *address) {
    for (;;) {
        int ready = uffd_wait(uffd, stop_fd);
        if (ready <= 0) return ready;
        struct uffd_msg message;
        ssize_t got = read(uffd, &message, sizeof message);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return -1;
        }
        if (got != sizeof message || message.event != UFFD_EVENT_PAGEFAULT) continue;
        *address = message.arg.pagefault.address;
        return 1;
    }
}

int CShims_uffd_copy(int uffd, uintptr_t destination, const void *source, size_t length, size_t *copied) {
    struct uffdio_copy copy = {.dst = destination, .src = (uintptr_t)source, .len = length, .mode = 0};
    *copied = 0;
    while (ioctl(uffd, UFFDIO_COPY, &copy) != 0) {
        int error = errno;
        if (copy.copy > 0) {
            // Partly done before the error: count it, and go on with the rest if the error allows.
            *copied += (size_t)copy.copy;
            copy.dst += (uint64_t)copy.copy;
            copy.src += (uint64_t)copy.copy;
            copy.len -= (uint64_t)copy.copy;
        }
        copy.copy = 0;
        if (error == EINTR || error == EAGAIN) continue;
        return -error;
    }
    *copied = length;
    return 0;
}

int CShims_uffd_zeropage(int uffd, uintptr_t destination, size_t length) {
    struct uffdio_zeropage zero = {.range = {.start = destination, .len = length}, .mode = 0};
    while (ioctl(uffd, UFFDIO_ZEROPAGE, &zero) != 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return -errno;
    }
    return 0;
}

int CShims_uffd_wake(int uffd, uintptr_t start, size_t length) {
    struct uffdio_range range = {.start = start, .len = length};
    return ioctl(uffd, UFFDIO_WAKE, &range) == 0 ? 0 : -errno;
}

// MARK: - Loaded objects and personality (ProcessImage in FerrySystem)

#include <link.h>
#include <sys/auxv.h>
#include <sys/personality.h>

struct CShims_dl_iterate_context {
    CShims_loaded_object_callback callback;
    void *context;
};

static int CShims_dl_iterate_forward(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct CShims_dl_iterate_context *forward = data;
    return forward->callback(info->dlpi_name ? info->dlpi_name : "", (uintptr_t)info->dlpi_addr, info->dlpi_phdr,
                             info->dlpi_phnum, forward->context);
}

int CShims_dl_iterate_phdr(CShims_loaded_object_callback callback, void *context) {
    struct CShims_dl_iterate_context forward = {.callback = callback, .context = context};
    return dl_iterate_phdr(CShims_dl_iterate_forward, &forward);
}

int CShims_personality(unsigned long persona) { return personality(persona); }

unsigned long CShims_getauxval(unsigned long type) { return getauxval(type); }

// MARK: - Control socket peer

#include <sys/socket.h>

int CShims_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    int result = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length);
    if (result == 0) {
        *pid = (int32_t)credentials.pid;
        *uid = (uint32_t)credentials.uid;
        *gid = (uint32_t)credentials.gid;
    }
    return result;
}

// MARK: - How much of a TCP stream the peer acknowledged

#include <netinet/in.h>
#include <linux/tcp.h>

int CShims_tcp_bytes_acked(int fd, uint64_t *acknowledged) {
    struct tcp_info info;
    socklen_t length = sizeof info;
    memset(&info, 0, sizeof info);
    int result = getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length);
    if (result == 0) {
        if (length < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof info.tcpi_bytes_acked) return -1;
        *acknowledged = info.tcpi_bytes_acked;
    }
    return result;
}

// MARK: - Lease watchdog

#include <sys/prctl.h>
#include <time.h>

static long long watchdog_now_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

int CShims_watchdog_start(int commands, int write_end, int owner, int deadline_ms, const char *message) {
    size_t message_length = strlen(message);
    pid_t child = fork();
    if (child != 0) return child;  // the owner (or -1)
    // The child: async-signal-safe calls only from here on.
    prctl(PR_SET_NAME, "ferry-watchdog", 0, 0, 0);
    close(write_end);
    for (int fd = 0; fd < 1024; fd++) {
        if (fd != commands && fd != 2) close(fd);
    }
    if (syscall(SYS_close_range, 1024, ~0U, 0) != 0) { /* older kernels: descriptors past 1024 stay */ }
    long long deadline = -1;  // disarmed
    for (;;) {
        int timeout = -1;
        if (deadline >= 0) {
            long long left = deadline - watchdog_now_ms();
            timeout = left > 0 ? (int)left : 0;
        }
        struct pollfd descriptor = {.fd = commands, .events = POLLIN};
        int ready = poll(&descriptor, 1, timeout);
        if (ready < 0) {
            if (errno == EINTR) continue;
            _exit(2);
        }
        if (ready == 0) {
            if (deadline >= 0 && watchdog_now_ms() >= deadline) {
                ssize_t ignored = write(2, message, message_length);
                (void)ignored;
                kill(owner, SIGKILL);
                _exit(1);
            }
            continue;
        }
        char buffer[64];
        ssize_t got = read(commands, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) _exit(0);  // the owner closed its end: it exited
        for (ssize_t i = 0; i < got; i++) {
            if (buffer[i] == 'a') deadline = watchdog_now_ms() + deadline_ms;
            if (buffer[i] == 'd') deadline = -1;
        }
    }
}
