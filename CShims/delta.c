#include "CShimsPageCoding.h"
#include <string.h>

static int put_varint(uint8_t *out, size_t capacity, size_t *at, size_t value) {
    do {
        if (*at >= capacity) return -1;
        uint8_t byte = value & 0x7f;
        value >>= 7;
        out[(*at)++] = byte | (value ? 0x80 : 0);
    } while (value);
    return 0;
}

static int get_varint(const uint8_t *in, size_t available, size_t *at, size_t *value) {
    size_t result = 0;
    for (int shift = 0; shift < 35; shift += 7) {
        if (*at >= available) return -1;
        uint8_t byte = in[(*at)++];
        result |= (size_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) { *value = result; return 0; }
    }
    return -1;
}

// The first index at or after `i` where the two differ (whole words compared first), or `length`.
static size_t next_difference(const uint8_t *a, const uint8_t *b, size_t i, size_t length) {
    while (i + 8 <= length) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) return i + (size_t)(__builtin_ctzll(x ^ y) / 8);
        i += 8;
    }
    while (i < length && a[i] == b[i]) i++;
    return i;
}

long CShims_delta_encode(const uint8_t *previous, const uint8_t *current, size_t length, uint8_t *out, size_t capacity) {
    size_t at = 0, i = 0;
    while (i < length) {
        size_t changed = next_difference(previous, current, i, length);
        size_t unchanged = changed - i;
        // A changed run ends at two equal bytes in a row (a shorter gap costs more as two runs than as data).
        size_t end = changed;
        while (end < length) {
            if (previous[end] != current[end]) { end++; continue; }
            if (end + 1 < length && previous[end + 1] != current[end + 1]) { end += 2; continue; }
            break;
        }
        if (end > length) end = length;
        size_t count = end - changed;
        if (put_varint(out, capacity, &at, unchanged) || put_varint(out, capacity, &at, count)) return -1;
        if (count > capacity - at) return -1;
        memcpy(out + at, current + changed, count);
        at += count;
        i = end;
    }
    return (long)at;
}

long CShims_delta_apply(uint8_t *page, size_t length, const uint8_t *encoded, size_t available) {
    size_t at = 0, i = 0;
    while (i < length) {
        size_t unchanged, count;
        if (get_varint(encoded, available, &at, &unchanged) || get_varint(encoded, available, &at, &count)) return -1;
        if (unchanged > length - i || count > length - i - unchanged || count > available - at) return -1;
        if (unchanged == 0 && count == 0) return -1;  // a run that covers nothing: malformed (and could loop)
        i += unchanged;
        memcpy(page + i, encoded + at, count);
        at += count;
        i += count;
    }
    return (long)at;
}
