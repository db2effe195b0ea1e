#ifndef _GNU_SOURCE
#error "CShims must be built with _GNU_SOURCE (set in Package.swift's cSettings)"
#endif

// The libcrypto calls peer authentication and key fingerprints need. Policy (what to MAC, when to refuse) lives in
// Swift, in FerryAuth; these only adapt OpenSSL's signatures and results.

#include "CShims.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

_Static_assert(EVP_MAX_MD_SIZE >= 32, "SHA-256 output must fit EVP_MAX_MD_SIZE");

int CShims_hmac_sha256(const void *key, size_t key_len, const void *data, size_t data_len, uint8_t out[32]) {
    if (key_len > INT_MAX) return -1;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (HMAC(EVP_sha256(), key, (int)key_len, data, data_len, digest, &length) == NULL || length != 32) {
        return -1;
    }
    for (unsigned i = 0; i < 32; i++) out[i] = digest[i];
    OPENSSL_cleanse(digest, sizeof digest);
    return 0;
}

int CShims_constant_time_equal(const void *a, const void *b, size_t n) {
    return CRYPTO_memcmp(a, b, n) == 0 ? 1 : 0;
}

int CShims_random_bytes(void *buf, size_t n) {
    if (n > INT_MAX) return -1;
    return RAND_bytes(buf, (int)n) == 1 ? 0 : -1;
}

int CShims_sha256(const void *data, size_t length, uint8_t out[32]) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_Digest(data, length, digest, &size, EVP_sha256(), NULL) != 1 || size != 32) return -1;
    for (unsigned i = 0; i < 32; i++) out[i] = digest[i];
    return 0;
}
