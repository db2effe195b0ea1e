import CShims

/// The three primitives of peer authentication, from the system libcrypto through `CShims`.
enum Crypto {
    /// Bytes of an HMAC-SHA-256.
    static let macLength = 32

    /// HMAC-SHA-256 of `data` under `key` (`HMAC(EVP_sha256(), ...)`).
    /// - Throws: `AuthError.crypto` when libcrypto fails (it does not for keys under 2 GiB).
    static func hmacSHA256(key: [UInt8], data: [UInt8], peer: String) throws(AuthError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: macLength)
        let status = key.withUnsafeBytes { keyBytes in
            data.withUnsafeBytes { dataBytes in
                out.withUnsafeMutableBufferPointer { outBytes in
                    CShims_hmac_sha256(
                        /* key: */ keyBytes.baseAddress, keyBytes.count,
                        /* data: */ dataBytes.baseAddress, dataBytes.count,
                        /* out: */ outBytes.baseAddress
                    )
                }
            }
        }
        guard status == 0 else { throw .crypto(peer: peer, "HMAC-SHA-256 failed in libcrypto") }
        return out
    }

    /// Whether `a` and `b` are equal, comparing their bytes in constant time (`CRYPTO_memcmp`). The
    /// lengths are not secret: different lengths are unequal at once.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        guard !a.isEmpty else { return true }
        return a.withUnsafeBytes { aBytes in
            b.withUnsafeBytes { bBytes in CShims_constant_time_equal(aBytes.baseAddress, bBytes.baseAddress, aBytes.count) == 1 }
        }
    }

    /// `count` bytes from the cryptographically secure generator (`RAND_bytes`), or nil if it failed.
    static func randomBytes(_ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let status = bytes.withUnsafeMutableBytes { CShims_random_bytes($0.baseAddress, $0.count) }
        return status == 0 ? bytes : nil
    }
}
