/*
 * ferry-lua — runs a script on the system's unmodified Lua 5.4 with the whole Lua state in Ferry's region,
 * so the running script can be live-migrated to another host and finish there.
 *
 *   ferry-lua start   --script FILE --output FILE --shared-dir DIR --control SOCK [--region-size SIZE]
 *                     [--hook-count N]
 *   ferry-lua receive --listen ADDR:PORT --shared-dir DIR --control SOCK
 *
 * How it works.
 *  - The state is created with lua_newstate and an allocator that calls ferry_alloc/realloc/free, so every
 *    Lua object, stack and string lives in the region. The state also holds pointers to C code and data
 *    outside the region (liblua's functions and static objects, this program's functions, libc's stdio
 *    FILEs behind io.stdout): ferry_fixed_layout, first thing in main, makes both hosts load them at the same
 *    addresses. The allocator's ud is the process's ferry_t*: after ferry_receive it is fixed with
 *    lua_setallocf before anything else touches the state.
 *  - The region holds the Lua stacks but not the C stack, so a safe point must be a place where the C stack
 *    is trivially the same on both hosts: the script's main chunk runs in a coroutine `co`, resumed by the
 *    host loop below. A count hook on `co` yields every N VM instructions (--hook-count, default 1000), but
 *    only when it runs in `co` itself (coroutines the script creates inherit the hook: there it just
 *    returns) and `co` is yieldable (not inside a C call such as a table.sort comparator, a string.gsub
 *    callback or a __tostring called by print). Back in the host loop, outside any Lua call, the host calls
 *    ferry_safe_point and then resumes `co`. The destination's host loop simply continues resuming `co`.
 *  - Output exactly once: print, io.write and io.stdout:write are replaced by C functions that format exactly
 *    like Lua's own and append to a buffer in the region; the buffer is written with pwrite at an offset kept
 *    in the region, which is advanced (with a running FNV-1a checksum) after each successful write. So the
 *    region always says how many bytes of the file are the workload's: the destination reopens the file
 *    (no truncation at open), cuts it to that length (bytes past it can only come from a process that no
 *    longer owns the workload), and goes on appending. Unflushed bytes travel in the region's buffer.
 *  - Flush callback: write the buffer, fsync. Verify callback: the file's size and FNV-1a checksum equal the
 *    region's records, and the Lua state looks sane.
 * What does not survive a move: anything the script holds outside the region — files opened with io.open
 * or io.popen (their FILE* is libc heap memory of the old process), io.output(file), C modules loaded with
 * require (dlopen'd), os.clock's origin, os.getenv's answers; and print/io.write are captured only while the
 * default output is io.stdout.
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
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "ferry.h"

#define FL_NAME "ferry-lua"
#define FL_MAGIC 0x61754c7972726546ULL /* "FerryLua" */
#define FL_VERSION 1
#define FL_BUFSZ (64 * 1024)           /* output buffer in the region */
#define FL_FLUSH_BYTES 4096            /* at a safe point, write the buffer once it holds this much... */
#define FL_FLUSH_SAFE_POINTS 64        /* ...or once this many safe points passed since the last write */
#define FL_DEFAULT_REGION (256ULL << 20)
#define FL_DEFAULT_HOOK_COUNT 1000
#define FL_STDOUT_KEY "ferry-lua.stdout" /* registry: the original io.stdout */

/* The root: everything the destination needs to continue, in the region. */
typedef struct fl_root {
    uint64_t magic;
    uint64_t version;
    lua_State *L;  /* the main thread */
    lua_State *co; /* the coroutine running the script's main chunk (anchored in the registry) */
    int co_ref;
    int warn_state; /* the warning function's state: 0 off, 1 on, 2 inside a multi-part message */
    uint64_t hook_count;
    uint64_t out_off;     /* bytes of the output file written by the workload (its length) */
    uint64_t out_fnv;     /* FNV-1a 64 of those bytes */
    uint64_t out_pending; /* safe points since the buffer was last written */
    int out_relative;     /* out_path is relative to the shared dir */
    char out_path[PATH_MAX];
    char script[PATH_MAX];
    struct {
        uint64_t safe_points;    /* yields to the host loop, across every host */
        uint64_t hook_calls;     /* count hook invocations */
        uint64_t yields;         /* hook invocations that yielded */
        uint64_t skip_nested;    /* ... that ran in a coroutine the script created: no yield */
        uint64_t skip_ccall;     /* ... that ran in co inside a C call (not yieldable): no yield */
        uint64_t yields_c_frame; /* (FERRY_LUA_CHECK=1) yields with a C function (pcall...) on co's stack */
        uint64_t writes;         /* pwrite calls */
        uint64_t moves;          /* receives */
    } st;
    size_t buf_len;
    char buf[FL_BUFSZ];
} fl_root;

static ferry_t *g_f;    /* this process's handle (never stored in the region, except as the fixed-up ud) */
static fl_root *R;      /* the root, in the region */
static int g_fd = -1;   /* the output file, opened by this process */
static char g_out[PATH_MAX + 64]; /* its path, resolved in this process */
static int g_hook_yielded;        /* the last LUA_YIELD came from the count hook */
static int g_check;               /* FERRY_LUA_CHECK=1: inspect co's stack at every yield */
static int g_moved;               /* FERRY_MOVED: the region is not ours any more */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ferry-lua: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void die_ferry(const char *what, int rc) __attribute__((noreturn));
static void die_ferry(const char *what, int rc) {
    const char *detail = ferry_last_error();
    fprintf(stderr, "ferry-lua: %s: %s\n", what, ferry_strerror(rc));
    if (detail && *detail) fprintf(stderr, "ferry-lua: %s\n", detail);
    exit(1);
}

static int in_region(const void *p, size_t n) {
    uintptr_t base = (uintptr_t)ferry_region_base(g_f), size = ferry_region_size(g_f), a = (uintptr_t)p;
    return a >= base && a - base <= size && size - (a - base) >= n;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The allocator: the whole Lua state in the region. ud is this process's ferry_t*.                      */

static void *fl_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    ferry_t *f = ud;
    if (nsize == 0) {
        if (ptr) ferry_free(f, ptr); /* Lua frees NULL blocks too (empty arrays) */
        return NULL;
    }
    void *p = ferry_realloc(f, ptr, nsize);
    if (!p && ptr && nsize <= osize) return ptr; /* a shrink that cannot move: keep the larger block */
    return p;
}

static int fl_panic(lua_State *L) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "ferry-lua: PANIC: unprotected error in call to Lua API (%s)\n",
            msg ? msg : "error object is not a string");
    return 0; /* Lua aborts */
}

/* Like lauxlib's warning function (which is static there): off until "@on"; the state is in the region. */
static void fl_warn(void *ud, const char *msg, int tocont) {
    int *state = ud;
    if (*state != 2 && !tocont && msg[0] == '@') { /* a control message */
        if (strcmp(msg, "@off") == 0) *state = 0;
        else if (strcmp(msg, "@on") == 0) *state = 1;
        return;
    }
    if (*state == 0) return;
    if (*state == 1) fputs("Lua warning: ", stderr);
    fputs(msg, stderr);
    if (tocont) *state = 2;
    else { fputs("\n", stderr); fflush(stderr); *state = 1; }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Output: a buffer in the region, written at the recorded offset.                                       */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ULL

/* pwrite at the recorded offset, advancing it (and the checksum) by what was written. 0 or -1 (errno). */
static int out_pwrite(const char *p, size_t n, size_t *done) {
    *done = 0;
    while (*done < n) {
        ssize_t w = pwrite(g_fd, p + *done, n - *done, (off_t)R->out_off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { if (w == 0) errno = EIO; return -1; }
        R->out_fnv = fnv1a(R->out_fnv, p + *done, (size_t)w);
        R->out_off += (uint64_t)w;
        *done += (size_t)w;
        R->st.writes++;
    }
    return 0;
}

/* Writes the buffer (what was written leaves it even on failure, so nothing is written twice). */
static int out_flush(void) {
    size_t done = 0;
    int rc = R->buf_len ? out_pwrite(R->buf, R->buf_len, &done) : 0;
    if (done) {
        memmove(R->buf, R->buf + done, R->buf_len - done);
        R->buf_len -= done;
    }
    R->out_pending = 0;
    return rc;
}

static int out_append(const char *s, size_t n) {
    if (R->buf_len + n > FL_BUFSZ && out_flush() != 0) return -1;
    if (n >= FL_BUFSZ) {
        size_t done;
        return out_pwrite(s, n, &done);
    }
    memcpy(R->buf + R->buf_len, s, n);
    R->buf_len += n;
    return 0;
}

static void out_or_error(lua_State *L, const char *s, size_t n) {
    if (out_append(s, n) != 0) luaL_error(L, "ferry-lua: cannot write the output %s: %s", g_out, strerror(errno));
}

/* Flush callback (on the safe-point thread, before a pause): the buffer to the file, then fsync. */
static int fl_flush_cb(void *ctx) {
    (void)ctx;
    if (g_moved) return 0; /* (should ferry_close call it after a move: the region is not ours to touch) */
    if (out_flush() != 0) { fprintf(stderr, "ferry-lua: flush: cannot write %s: %s\n", g_out, strerror(errno)); return 1; }
    if (fsync(g_fd) != 0) { fprintf(stderr, "ferry-lua: flush: cannot fsync %s: %s\n", g_out, strerror(errno)); return 1; }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* print, io.write, file:write — formatted exactly as Lua 5.4's own.                                     */

/* luaB_print: luaL_tolstring of each argument, tab-separated, newline. */
static int fl_print(lua_State *L) {
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        size_t l;
        const char *s = luaL_tolstring(L, i, &l);
        if (i > 1) out_or_error(L, "\t", 1);
        out_or_error(L, s, l);
        lua_pop(L, 1);
    }
    out_or_error(L, "\n", 1);
    return 0;
}

/* liolib's g_write: strings as they are, integers with LUA_INTEGER_FMT, floats with LUA_NUMBER_FMT. */
static void write_args(lua_State *L, int first, int last) {
    for (int arg = first; arg <= last; arg++) {
        if (lua_type(L, arg) == LUA_TNUMBER) {
            char b[64];
            int len = lua_isinteger(L, arg)
                          ? snprintf(b, sizeof b, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, arg))
                          : snprintf(b, sizeof b, LUA_NUMBER_FMT, (LUAI_UACNUMBER)lua_tonumber(L, arg));
            if (len < 0 || (size_t)len >= sizeof b) luaL_error(L, "ferry-lua: cannot format a number");
            out_or_error(L, b, (size_t)len);
        } else {
            size_t l;
            const char *s = luaL_checklstring(L, arg, &l);
            out_or_error(L, s, l);
        }
    }
}

static int is_original_stdout(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_getfield(L, LUA_REGISTRYINDEX, FL_STDOUT_KEY);
    int same = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return same;
}

/* Calls the original function (upvalue `up`) with this call's arguments and returns what it returns. */
static int call_original(lua_State *L, int up) {
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(up));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* io.write(...): captured while the default output is io.stdout; upvalues: the original io.write and io.output. */
static int fl_io_write(lua_State *L) {
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_call(L, 0, 1); /* io.output(): the current default output */
    if (!is_original_stdout(L, -1)) {
        lua_pop(L, 1);
        return call_original(L, 1);
    }
    write_args(L, 1, n);
    return 1; /* the file, as io.write returns it */
}

/* file:write(...) for every file handle: captured for io.stdout; upvalue: the original method. */
static int fl_file_write(lua_State *L) {
    if (!is_original_stdout(L, 1)) return call_original(L, 1);
    int n = lua_gettop(L);
    write_args(L, 2, n);
    lua_pushvalue(L, 1);
    return 1;
}

static void finish(int status) __attribute__((noreturn));

/* os.exit([code [, close]]): the output is flushed and Ferry closed first. */
static int fl_os_exit(lua_State *L) {
    int status;
    if (lua_isboolean(L, 1)) status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
    else status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
    finish(status);
}

/* The main chunk runs in co, not in the main thread: these make it look like lua5.4's main thread. */

/* coroutine.running(): (co, true) in the main chunk, as lua5.4 answers (main thread, true). */
static int fl_co_running(lua_State *L) {
    int ismain = lua_pushthread(L);
    lua_pushboolean(L, ismain || L == R->co);
    return 2;
}

/* coroutine.isyieldable([co]): false for the main chunk. */
static int fl_co_isyieldable(lua_State *L) {
    lua_State *co = L;
    if (!lua_isnone(L, 1)) {
        co = lua_tothread(L, 1);
        luaL_argexpected(L, co, 1, "coroutine");
    }
    lua_pushboolean(L, co != R->co && lua_isyieldable(co));
    return 1;
}

/* coroutine.yield(...): an error in the main chunk, as in lua5.4 (it would otherwise yield to the host). */
static int fl_co_yield(lua_State *L) {
    if (L == R->co) return luaL_error(L, "attempt to yield from outside a coroutine");
    return lua_yield(L, lua_gettop(L));
}

static void install_host_functions(lua_State *L) {
    lua_pushcfunction(L, fl_print);
    lua_setglobal(L, "print");

    lua_getglobal(L, "io");
    if (lua_type(L, -1) != LUA_TTABLE) die("no io library");
    lua_getfield(L, -1, "stdout");
    lua_setfield(L, LUA_REGISTRYINDEX, FL_STDOUT_KEY);
    lua_getfield(L, -1, "write");
    lua_getfield(L, -2, "output");
    lua_pushcclosure(L, fl_io_write, 2);
    lua_setfield(L, -2, "write");
    lua_pop(L, 1);

    /* the methods of every file handle (io.stdout:write, io.write(...):write) */
    if (luaL_getmetatable(L, LUA_FILEHANDLE) != LUA_TTABLE) die("no file handle metatable");
    if (lua_getfield(L, -1, "__index") != LUA_TTABLE) die("file handle methods are not a table");
    lua_getfield(L, -1, "write");
    lua_pushcclosure(L, fl_file_write, 1);
    lua_setfield(L, -2, "write");
    lua_pop(L, 2);

    lua_getglobal(L, "coroutine");
    lua_pushcfunction(L, fl_co_running);
    lua_setfield(L, -2, "running");
    lua_pushcfunction(L, fl_co_isyieldable);
    lua_setfield(L, -2, "isyieldable");
    lua_pushcfunction(L, fl_co_yield);
    lua_setfield(L, -2, "yield");
    lua_pop(L, 1);

    lua_getglobal(L, "os");
    lua_pushcfunction(L, fl_os_exit);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
}

/* ---------------------------------------------------------------------------------------------------- */
/* The count hook and the host loop.                                                                     */

static void fl_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    R->st.hook_calls++;
    if (L != R->co) { R->st.skip_nested++; return; }    /* a coroutine the script created */
    if (!lua_isyieldable(L)) { R->st.skip_ccall++; return; } /* inside a C call: a yield would cross it */
    if (g_check) {
        lua_Debug d;
        for (int level = 0; lua_getstack(L, level, &d); level++) {
            lua_getinfo(L, "S", &d);
            if (strcmp(d.what, "C") == 0) { R->st.yields_c_frame++; break; }
        }
    }
    R->st.yields++;
    g_hook_yielded = 1;
    (void)lua_yield(L, 0); /* must be the hook's last action */
}

static void print_stats(const char *what) {
    fprintf(stderr,
            "ferry-lua: %s: %" PRIu64 " safe points, %" PRIu64 " moves; hook: %" PRIu64 " calls, %" PRIu64
            " yields",
            what, R->st.safe_points, R->st.moves, R->st.hook_calls, R->st.yields);
    if (g_check) fprintf(stderr, " (%" PRIu64 " with a C frame such as pcall below)", R->st.yields_c_frame);
    fprintf(stderr,
            ", %" PRIu64 " skipped in nested coroutines, %" PRIu64 " skipped inside C calls; output %" PRIu64
            " bytes\n",
            R->st.skip_nested, R->st.skip_ccall, R->out_off + R->buf_len);
}

/* The script ended (or called os.exit): the output to disk, Ferry closed, exit. */
static void finish(int status) {
    if (out_flush() != 0) die("cannot write the output %s: %s", g_out, strerror(errno));
    if (fsync(g_fd) != 0) die("cannot fsync the output %s: %s", g_out, strerror(errno));
    print_stats("finished");
    int rc = ferry_close(g_f);
    g_f = NULL;
    close(g_fd);
    if (rc < 0) die_ferry("ferry_close", rc);
    exit(status);
}

static void report_error(void) {
    lua_State *L = R->L, *co = R->co;
    lua_xmove(co, L, 1); /* the error object; co's frames stay for the traceback */
    const char *msg = lua_tostring(L, -1);
    if (!msg) {
        if (luaL_callmeta(L, -1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) msg = lua_tostring(L, -1);
        else msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, -1));
    }
    luaL_traceback(L, co, msg, 0);
    fprintf(stderr, "ferry-lua: %s\n", lua_tostring(L, -1));
}

static void host_loop(void) {
    for (;;) {
        int nres = 0;
        g_hook_yielded = 0;
        int st = lua_resume(R->co, R->L, 0, &nres);
        if (st == LUA_OK) {
            lua_settop(R->co, 0);
            finish(EXIT_SUCCESS);
        }
        if (st != LUA_YIELD) {
            report_error();
            if (out_flush() == 0) (void)fsync(g_fd); /* what the script printed before the error */
            print_stats("failed");
            ferry_close(g_f);
            exit(1);
        }
        if (!g_hook_yielded)
            die("the script's main chunk called coroutine.yield (lua5.4 would fail: attempt to yield from outside "
                "a coroutine)");
        R->st.safe_points++;
        if (R->buf_len >= FL_FLUSH_BYTES || ++R->out_pending >= FL_FLUSH_SAFE_POINTS) {
            if (out_flush() != 0) die("cannot write the output %s: %s", g_out, strerror(errno));
        }
        uint64_t sp = R->st.safe_points;
        int rc = ferry_safe_point(g_f);
        if (rc == FERRY_CONTINUE) continue;
        if (rc == FERRY_MOVED) { /* the workload runs elsewhere now: do not touch the region */
            fprintf(stderr, "ferry-lua: moved away at safe point %" PRIu64 "; exiting\n", sp);
            g_moved = 1;
            close(g_fd);
            int crc = ferry_close(g_f);
            if (crc < 0) die_ferry("ferry_close", crc);
            exit(0);
        }
        if (rc == FERRY_STOPPED) { /* the workload ends here; the flush callback ran, flushing again is harmless */
            fprintf(stderr, "ferry-lua: stopped by `ferry stop` at safe point %" PRIu64 "\n", sp);
            if (out_flush() != 0 || fsync(g_fd) != 0) die("cannot write the output %s: %s", g_out, strerror(errno));
            close(g_fd);
            int crc = ferry_close(g_f);
            if (crc < 0) die_ferry("ferry_close", crc);
            exit(0);
        }
        die_ferry("ferry_safe_point", rc);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Verify callback: runs on a Ferry thread while the host loop waits in ferry_safe_point (the state is    */
/* still, and nothing here writes to it).                                                                 */

static int fl_verify_cb(void *ctx, char *detail, size_t cap) {
    fl_root *r = ctx;
#define FAIL(...) do { snprintf(detail, cap, "ferry-lua: " __VA_ARGS__); return 1; } while (0)
    if (!in_region(r, sizeof *r) || r->magic != FL_MAGIC) FAIL("the root is not a ferry-lua state");
    if (!in_region(r->L, 1) || !in_region(r->co, 1)) FAIL("the Lua state or its coroutine lies outside the region");
    if (lua_status(r->co) != LUA_YIELD) FAIL("the script's coroutine is not suspended (status %d)", lua_status(r->co));
    if (r->buf_len > FL_BUFSZ) FAIL("output buffer length %zu is damaged", r->buf_len);
    int fd = open(g_out, O_RDONLY);
    if (fd < 0) FAIL("cannot open the output %s: %s", g_out, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) { close(fd); FAIL("cannot stat the output %s: %s", g_out, strerror(errno)); }
    uint64_t h = FNV_INIT, total = 0;
    static char chunk[1 << 16];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { close(fd); FAIL("cannot read the output %s: %s", g_out, strerror(errno)); }
        if (n == 0) break;
        h = fnv1a(h, chunk, (size_t)n);
        total += (uint64_t)n;
    }
    close(fd);
    if ((uint64_t)sb.st_size != r->out_off || total != r->out_off)
        FAIL("the output %s has %" PRIu64 " bytes, the region records %" PRIu64, g_out, total, r->out_off);
    if (h != r->out_fnv)
        FAIL("the output's FNV-1a is %016" PRIx64 ", the region records %016" PRIx64, h, r->out_fnv);
    int kib = lua_gc(r->L, LUA_GCCOUNT);
    if (kib <= 0 || (uint64_t)kib * 1024 > ferry_region_size(g_f)) FAIL("implausible Lua heap size %d KiB", kib);
#undef FAIL
    snprintf(detail, cap,
             "ferry-lua: output %" PRIu64 " bytes, FNV-1a %016" PRIx64 " matches the region (%zu more buffered); "
             "Lua heap %d KiB; script suspended at safe point %" PRIu64,
             r->out_off, r->out_fnv, r->buf_len, kib, r->st.safe_points);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Options and main.                                                                                     */

static void usage(void) {
    fputs("usage: ferry-lua start   --script FILE --output FILE --shared-dir DIR --control SOCK\n"
          "                         [--region-size SIZE (default 256MiB)] [--hook-count N (default 1000)]\n"
          "       ferry-lua receive --listen ADDR:PORT --shared-dir DIR --control SOCK\n"
          "environment: FERRY_LUA_CHECK=1 inspects the coroutine's stack at every yield (counted in the final line)\n",
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

/* The output path as stored in the region: relative to the shared dir when it lies under it (the receiver
   resolves it against its own --shared-dir), else absolute. */
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
    if (realpath(shared, rshared)) {
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

static void resolve_output_path(const char *shared) {
    if (R->out_relative) snprintf(g_out, sizeof g_out, "%s/%s", shared, R->out_path);
    else snprintf(g_out, sizeof g_out, "%s", R->out_path);
}

static int start(const char *script, const char *output, const char *shared, const char *control,
                 uint64_t region, uint64_t hook_count) {
    char stored[PATH_MAX];
    int relative;
    store_output_path(output, shared, stored, sizeof stored, &relative);
    /* compile the script once outside the region first, so a syntax error fails before anything is claimed */
    lua_State *probe = luaL_newstate();
    if (!probe) die("cannot create a Lua state");
    if (luaL_loadfile(probe, script) != LUA_OK) die("%s", lua_tostring(probe, -1));
    lua_close(probe);

    ferry_options o;
    memset(&o, 0, sizeof o);
    o.name = FL_NAME;
    o.shared_dir = shared;
    o.control = control;
    long page = sysconf(_SC_PAGESIZE);
    o.size = (size_t)((region + (uint64_t)page - 1) / (uint64_t)page * (uint64_t)page);
    int rc = ferry_start(&o, &g_f);
    if (rc < 0) die_ferry("ferry_start", rc);

    R = ferry_alloc(g_f, sizeof *R);
    if (!R) die("the region (%zu bytes) cannot hold the root", ferry_region_size(g_f));
    memset(R, 0, sizeof *R);
    R->magic = FL_MAGIC;
    R->version = FL_VERSION;
    R->hook_count = hook_count;
    R->out_fnv = FNV_INIT;
    R->out_relative = relative;
    snprintf(R->out_path, sizeof R->out_path, "%s", stored);
    snprintf(R->script, sizeof R->script, "%s", script);
    resolve_output_path(shared);
    g_fd = open(g_out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (g_fd < 0) die("cannot create the output %s: %s", g_out, strerror(errno));

    lua_State *L = lua_newstate(fl_alloc, g_f);
    if (!L) die("cannot create the Lua state in the region");
    R->L = L;
    lua_atpanic(L, fl_panic);
    lua_setwarnf(L, fl_warn, &R->warn_state);
    luaL_checkversion(L);
    lua_gc(L, LUA_GCSTOP); /* as lua.c: no collection while building the state... */
    luaL_openlibs(L);
    install_host_functions(L);
    lua_createtable(L, 0, 1); /* arg = { [0] = script } */
    lua_pushstring(L, script);
    lua_rawseti(L, -2, 0);
    lua_setglobal(L, "arg");
    lua_gc(L, LUA_GCRESTART); /* ...then generational mode, as lua.c */
    lua_gc(L, LUA_GCGEN, 0, 0);

    lua_State *co = lua_newthread(L);
    R->co = co;
    R->co_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* anchored: the GC keeps it */
    if (luaL_loadfile(co, script) != LUA_OK) die("%s", lua_tostring(co, -1));
    lua_sethook(co, fl_hook, LUA_MASKCOUNT, (int)hook_count);

    ferry_set_root(g_f, R);
    ferry_on_flush(g_f, fl_flush_cb, R);
    ferry_on_verify(g_f, fl_verify_cb, R);
    fprintf(stderr, "ferry-lua: started %s (generation %" PRIu64 ", hook every %" PRIu64 " instructions), control %s\n",
            script, ferry_generation(g_f), hook_count, control);
    host_loop();
    return 1;
}

static int receive(const char *listen, const char *shared, const char *control) {
    ferry_options o;
    memset(&o, 0, sizeof o);
    o.name = FL_NAME;
    o.shared_dir = shared;
    o.control = control;
    o.listen = listen;
    fprintf(stderr, "ferry-lua: waiting for a migration on %s\n", listen);
    ferry_t *f = NULL;
    int rc = ferry_receive(&o, &f);
    if (rc == FERRY_STOPPED) {
        fprintf(stderr, "ferry-lua: stopped by `ferry stop` before any migration arrived\n");
        if (f) ferry_close(f);
        return 0;
    }
    if (rc < 0) die_ferry("ferry_receive", rc);
    g_f = f;
    R = ferry_root(f);
    if (!R || !in_region(R, sizeof *R) || R->magic != FL_MAGIC || R->version != FL_VERSION)
        die("the received region does not hold a ferry-lua state (root %p)", (void *)R);
    /* first of all: the allocator's ud inside the state is the old process's ferry_t* */
    lua_setallocf(R->L, fl_alloc, f);
    R->st.moves++;

    resolve_output_path(shared);
    g_fd = open(g_out, O_WRONLY);
    if (g_fd < 0) die("cannot open the output %s: %s", g_out, strerror(errno));
    struct stat sb;
    if (fstat(g_fd, &sb) != 0) die("cannot stat the output %s: %s", g_out, strerror(errno));
    if ((uint64_t)sb.st_size < R->out_off)
        die("the output %s has %jd bytes, fewer than the %" PRIu64 " the workload wrote: the shared file lost data",
            g_out, (intmax_t)sb.st_size, R->out_off);
    if ((uint64_t)sb.st_size > R->out_off) {
        fprintf(stderr, "ferry-lua: cutting %jd bytes the previous owner wrote after its last safe point\n",
                (intmax_t)((uint64_t)sb.st_size - R->out_off));
        if (ftruncate(g_fd, (off_t)R->out_off) != 0 || fsync(g_fd) != 0)
            die("cannot cut the output %s to %" PRIu64 " bytes: %s", g_out, R->out_off, strerror(errno));
    }
    ferry_on_flush(f, fl_flush_cb, R);
    ferry_on_verify(f, fl_verify_cb, R);
    fprintf(stderr, "ferry-lua: received %s at safe point %" PRIu64 " (generation %" PRIu64 "), output at %" PRIu64
            " bytes\n", R->script, R->st.safe_points, ferry_generation(f), R->out_off);
    host_loop();
    return 1;
}

int main(int argc, char **argv) {
    int rc = ferry_fixed_layout(argc, argv); /* the state points into liblua, libc and this binary */
    if (rc < 0) die_ferry("ferry_fixed_layout", rc);
    const char *env = getenv("FERRY_LUA_CHECK");
    g_check = env && strcmp(env, "1") == 0;

    if (argc < 2) usage();
    const char *mode = argv[1];
    int is_start = strcmp(mode, "start") == 0, is_receive = strcmp(mode, "receive") == 0;
    if (!is_start && !is_receive) usage();
    const char *script = NULL, *output = NULL, *shared = NULL, *control = NULL, *listen = NULL;
    uint64_t region = FL_DEFAULT_REGION, hook_count = FL_DEFAULT_HOOK_COUNT;
    for (int i = 2; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc) { fprintf(stderr, "ferry-lua: %s needs a value\n", opt); usage(); }
        const char *v = argv[++i];
        if (strcmp(opt, "--script") == 0 && is_start) script = v;
        else if (strcmp(opt, "--output") == 0 && is_start) output = v;
        else if (strcmp(opt, "--shared-dir") == 0) shared = v;
        else if (strcmp(opt, "--control") == 0) control = v;
        else if (strcmp(opt, "--listen") == 0 && is_receive) listen = v;
        else if (strcmp(opt, "--region-size") == 0 && is_start) {
            if (parse_size(v, &region) != 0 || region == 0) die("--region-size: not a size: %s", v);
        } else if (strcmp(opt, "--hook-count") == 0 && is_start) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (errno || end == v || *end || *v == '-' || n == 0 || n > INT_MAX) die("--hook-count: not a count: %s", v);
            hook_count = n;
        } else { fprintf(stderr, "ferry-lua: unknown option for %s: %s\n", mode, opt); usage(); }
    }
    if (!shared || !control) usage();
    if (is_start) {
        if (!script || !output) usage();
        return start(script, output, shared, control, region, hook_count);
    }
    if (!listen) usage();
    return receive(listen, shared, control);
}
