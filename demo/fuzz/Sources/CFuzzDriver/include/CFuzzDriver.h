// CFuzzDriver: hands control to libFuzzer.
//
// SwiftPM links an executable target with `--defsym main=<Target>_main` (so tests can import it), which
// on its own would replace libFuzzer's `main`. This target defines `FerryWireFuzzer_main`, and that
// function starts libFuzzer's driver with the Swift `LLVMFuzzerTestOneInput`.
#ifndef CFUZZDRIVER_H
#define CFUZZDRIVER_H

#include <stddef.h>
#include <stdint.h>

/// The fuzz target, defined in Swift with `@_cdecl("LLVMFuzzerTestOneInput")`.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/// The executable's entry point (see the comment above).
int FerryWireFuzzer_main(int argc, char **argv);

#endif
