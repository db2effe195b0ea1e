/// A mistake in how a command was called: printed with the command's usage, exit status 64 (`EX_USAGE`).
public struct UsageError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One `--option` a command accepts.
struct OptionSpec {
    let name: String
    /// Placeholder of its value (`SIZE`); nil for a flag that takes none.
    let value: String?
    let help: String
    /// Shown in the help; the command applies it.
    let defaultValue: String?

    init(_ name: String, _ value: String? = nil, _ help: String, default defaultValue: String? = nil) {
        self.name = name
        self.value = value
        self.help = help
        self.defaultValue = defaultValue
    }
}

/// What a command is called with: its options and positional words, checked against its spec.
struct ParsedArguments {
    private var values: [String: String] = [:]
    private var flags: Set<String> = []
    private(set) var positionals: [String] = []

    /// Parses `arguments` (`--name value`, `--name=value`, `--flag`, positional words).
    /// - Throws: `UsageError` for an option the command does not know or one missing its value.
    init(_ arguments: [String], options: [OptionSpec]) throws(UsageError) {
        let known = Dictionary(options.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            guard word.hasPrefix("--"), word.count > 2 else {
                positionals.append(word)
                continue
            }
            var name = String(word.dropFirst(2))
            var inlineValue: String?
            if let equals = name.firstIndex(of: "=") {
                inlineValue = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            guard let spec = known[name] else {
                throw UsageError("unknown option --\(name)")
            }
            if spec.value == nil {
                guard inlineValue == nil else { throw UsageError("--\(name) takes no value") }
                flags.insert(name)
            } else if let inlineValue {
                values[name] = inlineValue
            } else {
                guard index < arguments.count else { throw UsageError("--\(name) needs a value (\(spec.value!))") }
                values[name] = arguments[index]
                index += 1
            }
        }
    }

    func has(_ flag: String) -> Bool { flags.contains(flag) }
    func string(_ name: String) -> String? { values[name] }

    func string(_ name: String, default defaultValue: String) -> String { values[name] ?? defaultValue }

    func required(_ name: String) throws(UsageError) -> String {
        guard let value = values[name] else { throw UsageError("--\(name) is required") }
        return value
    }

    func bytes(_ name: String, default defaultValue: Int) throws(UsageError) -> Int {
        guard let text = values[name] else { return defaultValue }
        guard let value = Units.bytes(text), value > 0 else {
            throw UsageError("--\(name) \(text): not a size (write it like 4096, 256MiB or 1GiB)")
        }
        return value
    }

    func integer(_ name: String, default defaultValue: Int, range: ClosedRange<Int> = 1...Int.max) throws(UsageError) -> Int {
        guard let text = values[name] else { return defaultValue }
        guard let value = Int(text), range.contains(value) else {
            throw UsageError("--\(name) \(text): expected a whole number in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    func seconds(_ name: String, default defaultValue: Double) throws(UsageError) -> Double {
        guard let text = values[name] else { return defaultValue }
        guard let value = Units.seconds(text) else {
            throw UsageError("--\(name) \(text): not a duration (write it like 50ms or 2s)")
        }
        return value
    }

    func rate(_ name: String) throws(UsageError) -> Double? {
        guard let text = values[name] else { return nil }
        guard let value = Units.bytesPerSecond(text) else {
            throw UsageError("--\(name) \(text): not a rate (write it like 100mbit, 1gbit or 200MB/s)")
        }
        return value
    }

    /// A pace in steps per second: a count, or `max` for as fast as possible (infinity).
    func stepRate(_ name: String, default defaultValue: Double) throws(UsageError) -> Double {
        if values[name] == "max" { return .infinity }
        return try count(name, default: defaultValue)
    }

    func count(_ name: String, default defaultValue: Double) throws(UsageError) -> Double {
        guard let text = values[name] else { return defaultValue }
        guard let value = Units.count(text) else {
            throw UsageError("--\(name) \(text): not a number (write it like 2000 or 2k)")
        }
        return value
    }
}
