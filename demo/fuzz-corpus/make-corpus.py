#!/usr/bin/env python3
"""Writes the seed corpus of demo/fuzz.sh: valid frames of every type, encoded by hand from the wire
format in Sources/FerryWire/Frame.swift, plus a few streams of several frames and a few near misses.

Every frame is `u32 length (big-endian) | u8 type | body`; the length counts the type byte and the body.
Integers are big-endian; strings and byte strings are a u16 count followed by the bytes.

Run it from anywhere: python3 demo/fuzz-corpus/make-corpus.py (it rewrites the *.bin files beside it).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

HELLO, HELLO_REPLY, PAGE_DATA, ZERO_PAGES, ROUND_END, ROUND_ACK = 1, 2, 3, 4, 5, 6
DIGEST_REQUEST, DIGEST, COMMIT, RUNNING, ABORT, AUTH = 7, 8, 9, 10, 11, 12
DISCARD_PAGES, POST_COPY, URGENT_CHANNEL, PAGE_REQUEST, PAGE_EN_ROUTE, POST_COPY_DONE, PAGES_HELD = 13, 14, 15, 16, 17, 18, 19  # protocol 3
ENCODED_PAGES = 20  # protocol 4
ZSTD, LZ4, DELTA = 1, 2, 3


def u8(v): return struct.pack(">B", v)
def u16(v): return struct.pack(">H", v)
def u32(v): return struct.pack(">I", v)
def u64(v): return struct.pack(">Q", v)
def f64(v): return struct.pack(">d", v)
def string(s): b = s.encode("utf-8"); return u16(len(b)) + b
def blob(b): return u16(len(b)) + bytes(b)


def frame(kind, body=b""):
    return u32(1 + len(body)) + u8(kind) + body


# What a source reports of itself since protocol version 2: (path, build id, load address) of the
# executable and of every shared object, the executable first.
IMAGES = [
    ("/opt/demo/bin/counter", bytes(range(20)), 0x555555554000),
    ("/lib/x86_64-linux-gnu/libc.so.6", bytes(0xFF - i for i in range(20)), 0x7FFFF7D80000),
    ("/lib64/ld-linux-x86-64.so.2", bytes(range(100, 120)), 0x7FFFF7FC5000),
]


def image(path, build_id, load_address):
    return string(path) + blob(build_id) + u64(load_address)


def hello_v1_body(version, build, arch, page, base, size, workload, layout, token, value, generation, audit):
    """The hello body of protocol version 1, which version 2 extends at the end."""
    return (u16(version) + string(build) + string(arch) + u32(page) + u64(base) + u64(size)
            + string(workload) + u32(layout) + string(token) + string(value) + u64(generation)
            + u8(1 if audit else 0))


def hello(version=4, build="ferry 0.1 (git abc123)", arch="x86_64", page=4096, base=0x7F0000000000,
          size=1 << 30, workload="hotset", layout=1, token="ferry-token-1f2e", value="c0ffee", generation=7, audit=False,
          images=IMAGES, fixed=False):
    """A hello of the version 2 layout: the version 1 fields, then u16 image count | images | u8 fixedLayout."""
    return frame(HELLO, hello_v1_body(version, build, arch, page, base, size, workload, layout, token, value,
                                      generation, audit)
                 + u16(len(images)) + b"".join(image(*i) for i in images) + u8(1 if fixed else 0))


def round_end(round_, pages, zeros, size, final):
    return frame(ROUND_END, u32(round_) + u64(pages) + u64(zeros) + u64(size) + u8(1 if final else 0))


MAX64 = (1 << 64) - 1
MAX32 = (1 << 32) - 1
nonce = bytes(range(32))
mac = bytes(reversed(range(32)))

seeds = {
    "hello": hello(),
    "hello-fixed-layout": hello(audit=True, fixed=True),
    "hello-empty": hello(build="", arch="", page=0, base=0, size=0, workload="", layout=0, token="", value="",
                         generation=0, images=[]),
    "hello-long-names": hello(build="é" * 128, arch="é" * 128, workload="é" * 128, token="é" * 128,
                              value="é" * 128, page=MAX32, base=MAX64, size=MAX64, layout=MAX32, generation=MAX64,
                              images=[("é" * 512, bytes(range(64)), MAX64), ("/" * 1024, b"", 0), ("", b"\x01", 1)],
                              fixed=True),
    # Another version in this layout decodes (the destination refuses it by its version).
    "hello-version-4": hello(version=4),
    "hello-reply-accepted": frame(HELLO_REPLY, u8(0) + f64(0.25)),
    "hello-reply-accepted-zero": frame(HELLO_REPLY, u8(0) + f64(0.0)),
    "hello-reply-refused-memory": frame(HELLO_REPLY, u8(1) + u16(4)
                                        + string("not enough memory: free 1 GiB and retry")),
    "hello-reply-refused-auth": frame(HELLO_REPLY, u8(1) + u16(10)
                                      + string("the peer did not prove it holds the key")),
    "hello-reply-refused-other-empty": frame(HELLO_REPLY, u8(1) + u16(11) + string("")),
    "page-data": frame(PAGE_DATA, u64(0) + u32(1)),
    "page-data-high": frame(PAGE_DATA, u64(MAX64 - MAX32) + u32(MAX32)),
    "zero-pages": frame(ZERO_PAGES, u64(16) + u64(4096)),
    "zero-pages-max": frame(ZERO_PAGES, u64(0) + u64(MAX64)),
    "round-end": round_end(3, 100, 20, 409600, False),
    "round-end-final": round_end(MAX32, MAX64, MAX64, MAX64, True),
    "round-ack": frame(ROUND_ACK, u32(3)),
    "digest-request": frame(DIGEST_REQUEST),
    "digest-sha256": frame(DIGEST, string("sha256") + blob(bytes(range(32)))),
    "digest-empty": frame(DIGEST, string("") + blob(b"")),
    "digest-64": frame(DIGEST, string("blake2b") + blob(bytes(range(64)))),
    "commit": frame(COMMIT, u64(8)),
    "running": frame(RUNNING, u64(123456)),
    "abort": frame(ABORT, string("destination disk full: free space on /srv and retry")),
    "abort-empty": frame(ABORT, string("")),
    "abort-emoji": frame(ABORT, string("🚢" * 40)),
    "auth-challenge": frame(AUTH, blob(nonce) + blob(b"")),
    "auth-response": frame(AUTH, blob(nonce) + blob(mac)),
    "auth-confirm": frame(AUTH, blob(b"") + blob(mac)),
    "auth-empty": frame(AUTH, blob(b"") + blob(b"")),
    "discard-pages": frame(DISCARD_PAGES, u64(0) + u64(262144)),
    "post-copy": frame(POST_COPY, u64(2) + blob(bytes(range(16)))),
    "urgent-channel": frame(URGENT_CHANNEL, blob(bytes(range(16)))),
    "page-request": frame(PAGE_REQUEST, u64(4242) + u32(1)),
    "page-en-route": frame(PAGE_EN_ROUTE, u64(4242) + u32(1)),
    "pages-held": frame(PAGES_HELD, u64(20) + bytes([0xFF, 0x0F, 0x05])),
    "encoded-pages-zstd": frame(ENCODED_PAGES, u64(64) + u32(16) + u8(ZSTD) + u32(5000)),
    "encoded-pages-delta": frame(ENCODED_PAGES, u64(4242) + u32(1) + u8(DELTA) + u32(12)),
    "post-copy-done": frame(POST_COPY_DONE, u64(812) + u16(4) + u64(0) + u64(3) + u64(700) + u64(109)),
    # Streams of several frames, as a migration sends them.
    "stream-handshake": frame(AUTH, blob(nonce) + blob(b"")) + frame(AUTH, blob(nonce) + blob(mac)) + hello(),
    "stream-round": frame(PAGE_DATA, u64(0) + u32(1)) + frame(ZERO_PAGES, u64(1) + u64(7))
                    + round_end(0, 1, 7, 4096, False) + frame(ROUND_ACK, u32(0)),
    "stream-finish": frame(DIGEST_REQUEST) + frame(DIGEST, string("sha256") + blob(bytes(32)))
                     + frame(COMMIT, u64(2)) + frame(RUNNING, u64(9)),
    # Near misses, so the fuzzer starts next to every error path.
    "bad-empty-length": u32(0),
    "bad-too-large": u32((1 << 20) + 1) + u8(DIGEST_REQUEST),
    "bad-unknown-type": frame(200),
    "bad-truncated-header": u32(9)[:3],
    "bad-trailing": frame(ROUND_ACK, u32(3) + b"\x00"),
    "bad-utf8": frame(ABORT, u16(2) + b"\xc3\x28"),
    "bad-bool": frame(ROUND_END, u32(0) + u64(0) + u64(0) + u64(0) + u8(2)),
    "bad-page-count-zero": frame(ZERO_PAGES, u64(5) + u64(0)),
    "bad-page-overflow": frame(PAGE_DATA, u64(MAX64) + u32(1)),
    "bad-page-request-zero": frame(PAGE_REQUEST, u64(1) + u32(0)),
    "bad-pages-held-short": frame(PAGES_HELD, u64(20) + bytes([0xFF])),
    "bad-encoding": frame(ENCODED_PAGES, u64(1) + u32(1) + u8(9) + u32(10)),
    "bad-encoded-empty": frame(ENCODED_PAGES, u64(1) + u32(1) + u8(LZ4) + u32(0)),
    "bad-latency-buckets": frame(POST_COPY_DONE, u64(1) + u16(33) + u64(0) * 33),
    "bad-nonce-too-long": frame(AUTH, blob(bytes(65)) + blob(b"")),
    "bad-setup-nan": frame(HELLO_REPLY, u8(0) + f64(float("nan"))),
    "bad-refusal-code": frame(HELLO_REPLY, u8(1) + u16(99) + string("x")),
    # A version 1 hello ends before the image list: rejected as a hello of another version.
    "bad-hello-version-1": frame(HELLO, hello_v1_body(1, "ferry 0.1", "x86_64", 4096, 0x7F0000000000, 1 << 30,
                                                      "hotset", 1, "t", "v", 7, False)),
    "bad-hello-too-many-images": hello(images=[("/x", b"\x01", 1)] * 513),
    "bad-hello-path-too-long": hello(images=[("/" * 1025, b"", 0)]),
    "bad-hello-build-id-too-long": hello(images=[("/x", bytes(65), 0)]),
    "bad-hello-fixed-layout-bool": hello()[:-1] + u8(2),
    "bad-hello-truncated-images": u32(len(hello()) - 4 - 30) + hello()[4:-30],
}

for name in os.listdir(HERE):
    if name.endswith(".bin"):
        os.remove(os.path.join(HERE, name))
for name, data in seeds.items():
    with open(os.path.join(HERE, name + ".bin"), "wb") as out:
        out.write(data)
print(f"wrote {len(seeds)} seeds to {HERE}")
