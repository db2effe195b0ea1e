#if canImport(Glibc)
import Glibc
#endif
import CShims
public import FerrySystem

/// The secret both hosts hold: the bytes of a key file readable by its owner only.
///
/// A loaded key is at least ``minimumLength`` and at most ``maximumLength`` bytes, and came from a regular
/// file that neither its group nor others may read, write or execute (mode 0600 or stricter).
public struct PresharedKey: Sendable {
    /// The fewest bytes a key may have.
    public static let minimumLength = 16
    /// The most bytes a key file may hold (a longer file is not a key).
    public static let maximumLength = 4096
    /// The size of a key ``createIfAbsent(at:)`` writes.
    public static let generatedLength = 32

    /// Where the key came from, for messages; empty for a key given as bytes.
    public let path: String
    let bytes: [UInt8]

    /// A key given as bytes (tests, or a key from somewhere other than a file).
    /// - Throws: `KeyError.tooShort` or `.tooLong`.
    public init(bytes: [UInt8]) throws(KeyError) {
        guard bytes.count >= Self.minimumLength else { throw .tooShort(path: "", length: bytes.count) }
        guard bytes.count <= Self.maximumLength else { throw .tooLong(path: "", length: bytes.count) }
        self.bytes = bytes
        path = ""
    }

    /// Loads the key file at `path` (`--key FILE`).
    /// - Parameter path: The key file.
    /// - Throws: `KeyError`: `missing`, `notRegularFile`, `tooPermissive` (group or others have any
    ///   access), `tooShort`, `tooLong`, or `io` for any other failed call; each says what to do.
    public init(loadingFrom path: String) throws(KeyError) {
        // O_NONBLOCK: a FIFO at the path opens at once (and is then refused) instead of blocking.
        let descriptor = try Self.open(path, flags: O_RDONLY | O_NONBLOCK)
        // Checked on the open descriptor, so the file read is the file checked.
        var status = stat()
        do {
            _ = try systemCall("fstat", subject: path) { fstat(descriptor.rawValue, &status) }
        } catch {
            throw .io(path: path, error)
        }
        guard status.st_mode & S_IFMT == S_IFREG else { throw .notRegularFile(path: path) }
        let access = UInt32(status.st_mode) & 0o077
        guard access == 0 else { throw .tooPermissive(path: path, mode: UInt32(status.st_mode) & 0o7777) }
        guard status.st_size <= Self.maximumLength else { throw .tooLong(path: path, length: Int(status.st_size)) }

        let fd = descriptor.rawValue
        var bytes = [UInt8](repeating: 0, count: Self.maximumLength + 1)
        var count = 0
        while count < bytes.count {
            let got: Int
            do {
                got = try systemCall("read", subject: path) {
                    bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
                }
            } catch {
                throw .io(path: path, error)
            }
            if got == 0 { break }
            count += got
        }
        guard count >= Self.minimumLength else { throw .tooShort(path: path, length: count) }
        guard count <= Self.maximumLength else { throw .tooLong(path: path, length: count) }
        self.bytes = Array(bytes.prefix(count))
        self.path = path
    }

    /// Loads the key file at `path`, first creating it with ``generatedLength`` random bytes and mode
    /// 0600 if there is none (what `ferry run` does with its `--key`).
    ///
    /// Creation is exclusive (`O_CREAT | O_EXCL`): when another process creates the file at the same
    /// moment, this one loads that process's key instead (waiting up to 2 s for it to be written), so
    /// both end up with the same key.
    /// - Parameter path: The key file; its directory must exist.
    /// - Returns: The key now in the file.
    /// - Throws: `KeyError`, as ``init(loadingFrom:)``, or `random` when no random bytes could be had.
    public static func createIfAbsent(at path: String) throws(KeyError) -> PresharedKey {
        do {
            return PresharedKey(bytes: try writeNewKey(at: path), path: path)
        } catch {
            guard case .io(_, let failure) = error, failure.errno == .exists else { throw error }
            return try loadWrittenByAnother(path)
        }
    }

    /// Writes a new key of ``generatedLength`` random bytes to `path`, mode 0600 (`ferry keygen`).
    ///
    /// Without `replacing`, the file is created exclusively (`O_CREAT | O_EXCL`): an existing file is
    /// refused and left as it was. With `replacing`, the key is written to a new file (mode 0600) in the
    /// same directory, flushed, and renamed over `path`, and the directory is flushed: at every moment,
    /// even after a crash, `path` holds the old key or the whole new one. A link at `path` is replaced
    /// itself, not the file it leads to.
    /// - Parameters:
    ///   - path: The key file; its directory must exist.
    ///   - replacing: Whether an existing file at `path` is replaced.
    /// - Returns: The key now in the file.
    /// - Throws: `KeyError.exists` when there is a file and `replacing` is false, `random` when no random
    ///   bytes could be had, `io` for a failed call (nothing is left behind but the file as it was).
    public static func generate(at path: String, replacing: Bool = false) throws(KeyError) -> PresharedKey {
        guard replacing else {
            do {
                return PresharedKey(bytes: try writeNewKey(at: path), path: path)
            } catch {
                guard case .io(_, let failure) = error, failure.errno == .exists else { throw error }
                throw .exists(path: path)
            }
        }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        guard let suffix = Crypto.randomBytes(8) else { throw .random(path: path) }
        let temporary = (slash.map { String(path[...$0]) } ?? "") + ".\(name).new-" + hex(suffix)
        let bytes = try writeNewKey(at: temporary)
        do {
            _ = try systemCall("rename", subject: "\(temporary) to \(path)") { rename(temporary, path) }
        } catch {
            unlink(temporary)
            throw .io(path: path, error)
        }
        do {
            let parent = try OwnedDescriptor(opening: directory, flags: O_RDONLY | O_DIRECTORY)
            _ = try systemCall("fsync", subject: directory) { fsync(parent.rawValue) }
        } catch {
            throw .io(path: path, error)
        }
        return PresharedKey(bytes: bytes, path: path)
    }

    /// The first 16 hex digits of the SHA-256 of the key's bytes (libcrypto's `EVP_Digest`): equal on two
    /// hosts that hold the same key, without showing it; what `sha256sum FILE | cut -c1-16` prints for the
    /// key file. Nil if libcrypto failed (it does only when it cannot allocate).
    public var fingerprint: String? {
        var digest = [UInt8](repeating: 0, count: 32)
        let status = bytes.withUnsafeBytes { key in
            digest.withUnsafeMutableBufferPointer { CShims_sha256(key.baseAddress, key.count, $0.baseAddress) }
        }
        return status == 0 ? Self.hex(digest.prefix(8)) : nil
    }

    private static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// Creates `path` exclusively (`O_CREAT | O_EXCL`, mode 0600) and writes ``generatedLength`` random
    /// bytes to it, flushed; removes it again if that fails.
    /// - Returns: The bytes written.
    /// - Throws: `KeyError.io` (with `EEXIST` when there is a file at `path`), or `random`.
    private static func writeNewKey(at path: String) throws(KeyError) -> [UInt8] {
        let descriptor = try open(path, flags: O_WRONLY | O_CREAT | O_EXCL)
        let fd = descriptor.rawValue
        guard let bytes = Crypto.randomBytes(generatedLength) else {
            unlink(path)
            throw .random(path: path)
        }
        do {
            var written = 0
            while written < bytes.count {
                written += try systemCall("write", subject: path) {
                    bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
                }
            }
            _ = try systemCall("fsync", subject: path) { fsync(fd) }
        } catch {
            unlink(path)  // never leave a half-written key behind
            throw .io(path: path, error)
        }
        return bytes
    }

    /// Opens `path` (mode 0600 if it creates it); `missing` when there is nothing at `path`.
    private static func open(_ path: String, flags: Int32) throws(KeyError) -> OwnedDescriptor {
        // On the shared mount: ESTALE from a network file system is retried (`SharedFile`).
        do throws(SharedFileError) {
            let fd = try SharedFile.retrying { () throws(SharedFileError) -> CInt in
                try SharedFile.call("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode_t(0o600)) }
            }
            return OwnedDescriptor(taking: fd)
        } catch {
            if error.errno.rawValue == ENOENT && flags & O_CREAT == 0 { throw .missing(path: path) }
            throw .io(path: path, error.systemCallError)
        }
    }

    /// Loads a key file another process has just created, giving it a moment to finish writing.
    private static func loadWrittenByAnother(_ path: String) throws(KeyError) -> PresharedKey {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(2)
        while true {
            do {
                return try PresharedKey(loadingFrom: path)
            } catch {
                guard case .tooShort = error, clock.now < deadline else { throw error }
                usleep(10_000)
            }
        }
    }

    private init(bytes: [UInt8], path: String) {
        self.bytes = bytes
        self.path = path
    }
}

/// Why a key file cannot be used, and what to do about it.
public enum KeyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// There is no file at the path.
    case missing(path: String)
    /// The path is a directory, device or other non-regular file.
    case notRegularFile(path: String)
    /// Group or others have some access to the file (`mode` is its permission bits).
    case tooPermissive(path: String, mode: UInt32)
    /// The file holds fewer than ``PresharedKey/minimumLength`` bytes.
    case tooShort(path: String, length: Int)
    /// The file holds more than ``PresharedKey/maximumLength`` bytes.
    case tooLong(path: String, length: Int)
    /// The random generator failed while creating a key.
    case random(path: String)
    /// A new key was to be written where a file already is.
    case exists(path: String)
    /// A system call on the file failed.
    case io(path: String, SystemCallError)

    public var description: String {
        switch self {
        case .missing(let path):
            "key file \(path) does not exist; copy the key file of the other host there (mode 0600), or let "
                + "'ferry run --key \(path)' create one"
        case .notRegularFile(let path):
            "key file \(path) is not a regular file; give --key the path of the key file itself"
        case .tooPermissive(let path, let mode):
            "key file \(path) has mode 0\(String(mode, radix: 8)): its group or others can access it; "
                + "run 'chmod 600 \(path)' (and make a new key if others may have read it)"
        case .tooShort(let path, let length):
            "key \(path.isEmpty ? "" : "file \(path) ")holds \(length) bytes; a key needs at least "
                + "\(PresharedKey.minimumLength): write \(PresharedKey.generatedLength) random bytes, e.g. "
                + "'head -c 32 /dev/urandom > FILE && chmod 600 FILE'"
        case .tooLong(let path, let length):
            "key \(path.isEmpty ? "" : "file \(path) ")holds \(length) bytes, more than the "
                + "\(PresharedKey.maximumLength) a key may have; is --key the right file?"
        case .random(let path):
            "cannot create key file \(path): the random generator failed; retry, or create the key by hand"
        case .exists(let path):
            "key file \(path) already exists; keep it, or replace it with 'ferry keygen --force \(path)' "
                + "(then copy the new key to the other host too)"
        case .io(let path, let error):
            "cannot use key file \(path): \(error); check the path and that this user may read it"
        }
    }
}
