import FerryAuth

/// `ferry keygen FILE`: write a new pre-shared key for `--key`.
struct KeygenCommand: Command {
    static let path = ["keygen"]
    static let summary = "Write a new pre-shared key (32 random bytes, mode 0600) to FILE for --key."
    static let positionalUsage = "FILE"
    static let discussion = """
        Copy FILE to the other host (mode 0600 there too) and give it to 'ferry run' and 'ferry receive' on both
        as --key. An existing FILE is left alone unless --force is given.
        Prints FILE and the key's fingerprint: the first 16 hex digits of the SHA-256 of the key's bytes (not an
        HMAC), what 'sha256sum FILE | cut -c1-16' prints, so two hosts can check they hold the same key without
        showing it.
        """
    static let options = [
        OptionSpec(
            "force", nil,
            "Replace an existing FILE, atomically: the new key is written to a new file (mode 0600) in the same directory, flushed, and renamed over FILE. Processes that loaded the old key keep using it."
        )
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        guard arguments.positionals.count == 1, let path = arguments.positionals.first else {
            throw UsageError(arguments.positionals.isEmpty ? "expected the key FILE to write" : "expected one key FILE, got \(arguments.positionals.count)")
        }
        let written: PresharedKey
        let loaded: PresharedKey
        do {
            written = try PresharedKey.generate(at: path, replacing: arguments.has("force"))
            // What 'ferry run --key' will load: the same checks (regular file, mode, length).
            loaded = try PresharedKey(loadingFrom: path)
        } catch {
            throw CommandFailure(status: .failure, message: "\(error)")
        }
        guard let fingerprint = written.fingerprint, loaded.fingerprint == fingerprint else {
            throw CommandFailure(
                status: .failure,
                message: written.fingerprint == nil
                    ? "wrote \(path), but cannot compute its fingerprint (SHA-256 failed in libcrypto)"
                    : "wrote a key to \(path), but the file now holds another: did another process write it at the same time?")
        }
        printLine("key          \(path)")
        printLine("fingerprint  \(fingerprint)")
        return .success
    }
}
