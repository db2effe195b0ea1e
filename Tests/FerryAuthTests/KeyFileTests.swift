#if canImport(Glibc)
import Glibc
#endif
@testable import FerryAuth
import Testing

@Suite struct KeyFileTests {
    @Test func aKeyFileOfMode0600Loads() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/key"
            try writeFile(path, Array(1...20), mode: 0o600)
            let key = try PresharedKey(loadingFrom: path)
            #expect(key.bytes == Array(1...20))
            #expect(key.path == path)
            try writeFile(path, Array(1...20), mode: 0o400)
            #expect(try PresharedKey(loadingFrom: path).bytes == Array(1...20))
        }
    }

    @Test(arguments: [0o644, 0o640, 0o604, 0o660, 0o606, 0o610] as [mode_t])
    func aKeyFileOthersCanReadIsRefused(mode: mode_t) throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/key"
            try writeFile(path, Array(repeating: 1, count: 32), mode: mode)
            #expect(throws: KeyError.tooPermissive(path: path, mode: UInt32(mode))) { try PresharedKey(loadingFrom: path) }
            do {
                _ = try PresharedKey(loadingFrom: path)
            } catch {
                #expect("\(error)".contains("chmod 600 \(path)"))
            }
        }
    }

    @Test func aShortKeyFileIsRefused() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/key"
            try writeFile(path, Array(repeating: 1, count: 15), mode: 0o600)
            #expect(throws: KeyError.tooShort(path: path, length: 15)) { try PresharedKey(loadingFrom: path) }
            try writeFile(path, [], mode: 0o600)
            #expect(throws: KeyError.tooShort(path: path, length: 0)) { try PresharedKey(loadingFrom: path) }
        }
    }

    @Test func aHugeFileIsNotAKey() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/key"
            try writeFile(path, Array(repeating: 1, count: PresharedKey.maximumLength + 1), mode: 0o600)
            #expect(throws: KeyError.tooLong(path: path, length: PresharedKey.maximumLength + 1)) { try PresharedKey(loadingFrom: path) }
        }
    }

    @Test func aMissingKeyFileOrADirectoryIsRefused() throws {
        try withTemporaryDirectory { directory in
            #expect(throws: KeyError.missing(path: directory + "/none")) { try PresharedKey(loadingFrom: directory + "/none") }
            #expect(throws: KeyError.notRegularFile(path: directory)) { try PresharedKey(loadingFrom: directory) }
            let fifo = directory + "/fifo"
            #expect(mkfifo(fifo, 0o600) == 0)
            #expect(throws: KeyError.notRegularFile(path: fifo)) { try PresharedKey(loadingFrom: fifo) }
        }
    }

    @Test func aMissingKeyIsCreatedWithMode0600AndThenReused() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/key"
            let created = try PresharedKey.createIfAbsent(at: path)
            #expect(fileMode(path) == 0o600)
            #expect(created.bytes.count == PresharedKey.generatedLength)
            #expect(try PresharedKey(loadingFrom: path).bytes == created.bytes)
            #expect(try PresharedKey.createIfAbsent(at: path).bytes == created.bytes)
            let another = try PresharedKey.createIfAbsent(at: directory + "/other")
            #expect(another.bytes != created.bytes)
        }
    }

    @Test func createIfAbsentRefusesAnExistingKeyOthersCanRead() throws {
        try withTemporaryDirectory { directory in
            let path = directory + "/key"
            try writeFile(path, Array(repeating: 1, count: 32), mode: 0o644)
            #expect(throws: KeyError.tooPermissive(path: path, mode: 0o644)) { try PresharedKey.createIfAbsent(at: path) }
        }
    }

    @Test func concurrentCreatorsEndUpWithTheSameKey() throws {
        try withTemporaryDirectory { directory in
            for round in 0..<20 {
                let path = directory + "/key-\(round)"
                let creators = (0..<4).map { _ in Spawned { try? PresharedKey.createIfAbsent(at: path).bytes } }
                let keys = creators.map { $0.join() }
                #expect(keys.allSatisfy { $0 != nil && $0 == keys[0] })
            }
        }
    }

    @Test func keysGivenAsBytesAreCheckedToo() {
        #expect(throws: KeyError.tooShort(path: "", length: 3)) { try PresharedKey(bytes: [1, 2, 3]) }
    }
}

@Suite struct CryptoTests {
    /// RFC 4231, test case 2: proves libcrypto's HMAC-SHA-256 is the one linked.
    @Test func hmacSHA256MatchesRFC4231() throws {
        let mac = try Crypto.hmacSHA256(key: Array("Jefe".utf8), data: Array("what do ya want for nothing?".utf8), peer: "")
        let hex = mac.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        #expect(hex == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test func constantTimeEqualComparesEveryByte() {
        let a = Array(repeating: UInt8(0x42), count: 32)
        #expect(Crypto.constantTimeEqual(a, a))
        for index in a.indices {
            var b = a
            b[index] ^= 0x80
            #expect(!Crypto.constantTimeEqual(a, b))
        }
        #expect(!Crypto.constantTimeEqual(a, Array(a.prefix(31))))
        #expect(Crypto.constantTimeEqual([], []))
    }

    @Test func randomBytesDiffer() throws {
        let a = try #require(Crypto.randomBytes(32))
        let b = try #require(Crypto.randomBytes(32))
        #expect(a.count == 32 && a != b)
    }
}
