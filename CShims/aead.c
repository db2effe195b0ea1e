#include "CShimsAEAD.h"

#include <limits.h>
#include <stdlib.h>
#include <openssl/evp.h>

struct CShims_aead {
    EVP_CIPHER_CTX *context;
    int encrypt;
};

CShims_aead *CShims_aead_new(const uint8_t key[32], int encrypt) {
    CShims_aead *aead = calloc(1, sizeof *aead);
    if (aead == NULL) return NULL;
    aead->encrypt = encrypt;
    aead->context = EVP_CIPHER_CTX_new();
    // The key is set once; each record only sets its nonce (EVP_CipherInit_ex with a NULL cipher and key).
    if (aead->context == NULL || EVP_CipherInit_ex(aead->context, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt) != 1 ||
        EVP_CIPHER_CTX_ctrl(aead->context, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
        EVP_CipherInit_ex(aead->context, NULL, NULL, key, NULL, encrypt) != 1) {
        CShims_aead_free(aead);
        return NULL;
    }
    return aead;
}

void CShims_aead_free(CShims_aead *aead) {
    if (aead == NULL) return;
    EVP_CIPHER_CTX_free(aead->context);
    free(aead);
}

/// Feeds `length` bytes through the cipher in pieces EVP's int lengths can hold.
static int update(EVP_CIPHER_CTX *context, const void *in, void *out, size_t length) {
    const unsigned char *from = in;
    unsigned char *to = out;
    while (length > 0) {
        int piece = length > (size_t)(INT_MAX / 2) ? INT_MAX / 2 : (int)length;
        int written = 0;
        if (EVP_CipherUpdate(context, to, &written, from, piece) != 1 || written != piece) return -1;
        from += piece;
        to += piece;
        length -= (size_t)piece;
    }
    return 0;
}

static int begin(CShims_aead *aead, const uint8_t nonce[12], const void *aad, size_t aad_length) {
    int ignored = 0;
    if (aad_length > (size_t)INT_MAX) return -1;
    if (EVP_CipherInit_ex(aead->context, NULL, NULL, NULL, nonce, aead->encrypt) != 1) return -1;
    if (aad_length > 0 && EVP_CipherUpdate(aead->context, NULL, &ignored, aad, (int)aad_length) != 1) return -1;
    return 0;
}

int CShims_aead_seal(CShims_aead *aead, const uint8_t nonce[12], const void *aad, size_t aad_length,
                     const void *in, void *out, size_t length, uint8_t tag[16]) {
    int written = 0;
    unsigned char final[16];
    if (!aead->encrypt || begin(aead, nonce, aad, aad_length) != 0) return -1;
    if (update(aead->context, in, out, length) != 0) return -1;
    if (EVP_CipherFinal_ex(aead->context, final, &written) != 1 || written != 0) return -1;
    return EVP_CIPHER_CTX_ctrl(aead->context, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1 ? 0 : -1;
}

int CShims_aead_open(CShims_aead *aead, const uint8_t nonce[12], const void *aad, size_t aad_length,
                     const void *in, void *out, size_t length, const uint8_t tag[16]) {
    int written = 0;
    unsigned char final[16];
    if (aead->encrypt || begin(aead, nonce, aad, aad_length) != 0) return -1;
    if (update(aead->context, in, out, length) != 0) return -1;
    if (EVP_CIPHER_CTX_ctrl(aead->context, EVP_CTRL_GCM_SET_TAG, 16, (void *)tag) != 1) return -1;
    return EVP_CipherFinal_ex(aead->context, final, &written) == 1 ? 0 : 1;
}
