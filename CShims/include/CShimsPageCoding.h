// Page coding for slow links: the system's zstd and lz4 (their headers, for Swift to call), and the delta of a
// page against the copy sent last time (XOR-free run-length form, as QEMU's XBZRLE), which Swift cannot
// express at memory speed without unsafe loops of its own.
#ifndef CSHIMS_PAGE_CODING_H
#define CSHIMS_PAGE_CODING_H

#include <stddef.h>
#include <stdint.h>
#include <zstd.h>
#include <lz4.h>

/// Encodes `current` against `previous` (both `length` bytes) as runs: `varint unchanged | varint changed |
/// the changed bytes of current`, repeated until the runs cover `length` bytes. Returns the encoded size, or
/// -1 when it would exceed `capacity` (the caller then sends the page as it is).
long CShims_delta_encode(const uint8_t *previous, const uint8_t *current, size_t length, uint8_t *out, size_t capacity);

/// Applies one page's encoding to `page` (which holds the previous content) in place. Returns the number of
/// encoded bytes it consumed, or -1 when the encoding is malformed (a run past the page, a truncated varint
/// or run); the page may then be partly changed.
long CShims_delta_apply(uint8_t *page, size_t length, const uint8_t *encoded, size_t available);

#endif
