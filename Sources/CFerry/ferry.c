/* The C API is implemented in Swift (Sources/Ferry, @_cdecl); this target only carries ferry.h. */
