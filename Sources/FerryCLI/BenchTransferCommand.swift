#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerrySystem
import FerryTransport

/// `ferry bench transfer`: Ferry's stream against a plain TCP stream between two processes, same run.
struct BenchTransferCommand: Command {
    static let path = ["bench", "transfer"]
    static let summary = "Measure Ferry's transfer rate against a raw TCP stream over loopback, in the same run."
    static let discussion = """
        Each run migrates an idle region of random bytes between two real ferry processes and, right after,
        sends the same number of bytes from a populated buffer over a plain TCP connection, in 4 MiB writes as
        Ferry's page frames are, to a sink process that reads them into a populated buffer (the ceiling). Like
        the sink, Ferry's destination has its memory ready for these (`ferry receive --reserve`); the same move
        with default flags, where the destination populates alongside the stream, is reported beside them. It
        also migrates a never-touched region and an all-zero populated one. Rates are of the full-copy round;
        times are of the whole migration, end to end. Build in release mode.
        """
    static let options = [
        OptionSpec("region-size", "SIZE", "Region to move.", default: "1GiB"),
        OptionSpec("runs", "N", "Repetitions; medians are reported.", default: "3"),
        OptionSpec("json", "FILE", "Also write the results as JSON to FILE (- for standard output)."),
    ]

    struct Report: Encodable {
        let region_bytes: Int
        let runs: Int
        /// The plain Ferry stream (`--encryption none`) into a reserved destination.
        let ferry_gbps: Double
        /// The same with default flags: the destination populates alongside the stream.
        let ferry_default_gbps: Double
        /// The sealed stream (AES-256-GCM, the default).
        let sealed_gbps: Double
        let raw_tcp_gbps: Double
        let ratio: Double
        /// Sealed against plain, per run, median.
        let sealed_ratio: Double
        let untouched_seconds: Double
        let zero_seconds: Double
        let setup_seconds: Double
        let ferry_gbps_runs: [Double]
        let sealed_gbps_runs: [Double]
        let raw_tcp_gbps_runs: [Double]
    }

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let size = try arguments.bytes("region-size", default: 1 << 30)
        let runs = try arguments.integer("runs", default: 3, range: 1...100)
        #if DEBUG
        printError("note: this is a debug build; measure with 'swift run -c release ferry bench transfer'")
        #endif
        printLine("Transfer benchmark: \(ByteCount(size)) over loopback, \(runs) runs")
        var ferry: [Double] = []
        var ferryDefault: [Double] = []
        var sealed: [Double] = []
        var raw: [Double] = []
        var untouched: [Double] = []
        var zero: [Double] = []
        var setup: [Double] = []
        for run in 1...runs {
            let reserve = ["--reserve", "\(size)"]
            let random = try migrateIdle(size: size, fill: "random", encryption: "none", receiveOptions: reserve)
            ferry.append(Double(random.bytes) * 8 / random.seconds / 1e9)
            let randomDefault = try migrateIdle(size: size, fill: "random", encryption: "none")
            ferryDefault.append(Double(randomDefault.bytes) * 8 / randomDefault.seconds / 1e9)
            setup.append(randomDefault.setup)
            let randomSealed = try migrateIdle(size: size, fill: "random", encryption: "aes-256-gcm", receiveOptions: reserve)
            sealed.append(Double(randomSealed.bytes) * 8 / randomSealed.seconds / 1e9)
            raw.append(try rawTCPGigabits(bytes: size))
            untouched.append(try migrateIdle(size: size, fill: "none").total)
            zero.append(try migrateIdle(size: size, fill: "zero").total)
            printLine(String(format: "  run %d/%d: ferry %.2f Gbit/s (default flags %.2f), sealed %.2f Gbit/s, raw TCP %.2f Gbit/s, untouched %.3f s, zero %.3f s, setup %.3f s",
                             run, runs, ferry.last!, ferryDefault.last!, sealed.last!, raw.last!, untouched.last!, zero.last!, setup.last!))
        }
        let report = Report(
            region_bytes: size, runs: runs, ferry_gbps: Statistics.median(ferry), ferry_default_gbps: Statistics.median(ferryDefault), sealed_gbps: Statistics.median(sealed),
            raw_tcp_gbps: Statistics.median(raw), ratio: Statistics.median(ferry) / Statistics.median(raw),
            sealed_ratio: Statistics.median(zip(sealed, ferry).map { $0 / $1 }), untouched_seconds: Statistics.median(untouched),
            zero_seconds: Statistics.median(zero), setup_seconds: Statistics.median(setup), ferry_gbps_runs: ferry,
            sealed_gbps_runs: sealed, raw_tcp_gbps_runs: raw)
        printLine(String(format: """

            ferry, plain           %.2f Gbit/s (random bytes, --encryption none, into a reserved destination)
            ferry, plain, default  %.2f Gbit/s (the destination populates alongside the stream)
            ferry, sealed          %.2f Gbit/s (AES-256-GCM, the default; %.2f of plain, median of the runs' ratios)
            raw TCP stream         %.2f Gbit/s
            ratio plain / raw      %.2f
            never-touched region   %.3f s (whole migration, end to end)
            all-zero region        %.3f s (whole migration, end to end)
            destination set-up     %.3f s (before the first byte; populating runs alongside the stream)
            """, report.ferry_gbps, report.ferry_default_gbps, report.sealed_gbps, report.sealed_ratio, report.raw_tcp_gbps, report.ratio, report.untouched_seconds, report.zero_seconds, report.setup_seconds))
        if let path = arguments.string("json") { try JSONReport.write(report, to: path) }
        return .success
    }

    /// Migrates an idle region between two fresh processes; returns the full copy's bytes and seconds,
    /// the whole migration's seconds (end to end) and the destination's set-up.
    static func migrateIdle(size: Int, fill: String, encryption: String = "aes-256-gcm", receiveOptions: [String] = []) throws -> (bytes: Int, seconds: Double, total: Double, setup: Double) {
        let pair = try LocalPair(workload: "hotset", regionSize: "\(size)", fill: fill, dirtyRate: "0", receiveOptions: receiveOptions)
        defer { pair.tearDown() }
        let result = try pair.migrate(["encryption": encryption]) { _ in }
        guard let report = result["report"] as? [String: Any], report["outcome"] as? String == "completed",
              let rounds = report["rounds"] as? [[String: Any]], let first = rounds.first else {
            throw CommandFailure(status: .failure, message: "the \(fill) migration did not complete: \(result["error"] ?? "unknown")")
        }
        let number = { (object: [String: Any], key: String) -> Double in object[key] as? Double ?? Double(object[key] as? Int ?? 0) }
        // The whole migration, end to end (the destination's set-up is in it).
        let stream = number(report, "total_seconds")
        return (Int(number(first, "bytes")), number(first, "seconds"), stream, number(report, "setup_seconds"))
    }

    /// Sends `bytes` from a populated buffer to a sink process over plain TCP; Gbit/s until the sink's ack.
    static func rawTCPGigabits(bytes: Int) throws -> Double {
        let port = try Listener(on: Endpoint(host: "127.0.0.1", port: 0)).endpoint.port
        let sink = Process()
        sink.executableURL = URL(fileURLWithPath: LocalPair.executable)
        sink.arguments = ["bench", "tcp-sink", "--listen", "127.0.0.1:\(port)", "--bytes", "\(bytes)"]
        try sink.run()
        defer { if sink.isRunning { sink.terminate() }; sink.waitUntilExit() }
        let buffer = try AnonymousMapping(byteCount: bytes, populate: true)
        var random = SplitMix64(seed: 7)
        let words = buffer.range.baseAddress.assumingMemoryBound(to: UInt64.self)
        for index in 0..<(bytes / 8) { words[index] = random.next() }
        var connection: Connection?
        for _ in 0..<200 where connection == nil {
            connection = try? Connection.connect(to: Endpoint(host: "127.0.0.1", port: port))
            if connection == nil { usleep(20_000) }
        }
        guard let connection else { throw CommandFailure(status: .failure, message: "the TCP sink did not start") }
        let start = ContinuousClock.now
        // In 4 MiB writes, as Ferry's page frames are: the same syscall pattern, without the protocol.
        var offset = 0
        while offset < bytes {
            let chunk = min(4 << 20, bytes - offset)
            try connection.sendBytes(UnsafeRawBufferPointer(start: buffer.range.baseAddress + offset, count: chunk))
            offset += chunk
        }
        var ack: UInt8 = 0
        try withUnsafeMutableBytes(of: &ack) { try connection.receiveBytes(into: $0) }
        return Double(bytes) * 8 / (ContinuousClock.now - start).secondsValue / 1e9
    }
}

/// `ferry bench tcp-sink`: the receiving end of the raw TCP baseline (started by `bench transfer`).
struct BenchTCPSinkCommand: Command {
    static let path = ["bench", "tcp-sink"]
    static let summary = "Receive N bytes over plain TCP into a populated buffer, then acknowledge (used by bench transfer)."
    static let options = [
        OptionSpec("listen", "ADDR:PORT", "Where to accept the one connection.", default: "required"),
        OptionSpec("bytes", "N", "How many bytes to read before acknowledging.", default: "required"),
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        guard let endpoint = Endpoint(try arguments.required("listen")) else { throw UsageError("--listen: expected ADDR:PORT") }
        let bytes = try arguments.bytes("bytes", default: 0)
        let buffer = try AnonymousMapping(byteCount: bytes, populate: true)
        let listener = try Listener(on: endpoint)
        let connection = try listener.accept(timeoutSeconds: 60)
        var offset = 0
        while offset < bytes {
            let chunk = min(4 << 20, bytes - offset)
            try connection.receiveBytes(into: UnsafeMutableRawBufferPointer(start: buffer.range.baseAddress + offset, count: chunk))
            offset += chunk
        }
        var ack: UInt8 = 1
        try withUnsafeBytes(of: &ack) { try connection.sendBytes($0) }
        return .success
    }
}
