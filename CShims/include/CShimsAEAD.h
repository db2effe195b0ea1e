// AES-256-GCM through the system libcrypto (EVP), for sealed migration frames (FerryTransport's `Sealer`).
// Policy (keys, nonces, record layout) lives in Swift; these only adapt OpenSSL's calls.
#ifndef CSHIMS_AEAD_H
#define CSHIMS_AEAD_H

#include <stddef.h>
#include <stdint.h>

/// An AES-256-GCM context bound to one 32-byte key, for one direction (encrypting or decrypting).
typedef struct CShims_aead CShims_aead;

/// A context that seals (`encrypt` 1) or opens (`encrypt` 0) with `key` (32 bytes); NULL if libcrypto fails.
CShims_aead *CShims_aead_new(const uint8_t key[32], int encrypt);
void CShims_aead_free(CShims_aead *aead);

/// Encrypts `length` bytes from `in` to `out` (they may be the same buffer) under the 12-byte `nonce`,
/// authenticating `aad` too, and writes the 16-byte tag. Returns 0, or -1 if libcrypto failed.
int CShims_aead_seal(CShims_aead *aead, const uint8_t nonce[12], const void *aad, size_t aad_length,
                     const void *in, void *out, size_t length, uint8_t tag[16]);

/// Decrypts `length` bytes from `in` to `out` (may be the same buffer) and checks `tag` over them and `aad`.
/// Returns 0 when authentic, 1 when the tag does not match (the output must then be discarded), -1 if
/// libcrypto failed.
int CShims_aead_open(CShims_aead *aead, const uint8_t nonce[12], const void *aad, size_t aad_length,
                     const void *in, void *out, size_t length, const uint8_t tag[16]);

#endif  // CSHIMS_AEAD_H
