#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FerryRegion
import FerryWorkloads
import FerryTransport
import Synchronization

/// The `download` workload's blocks served over TCP (the business network): a request is the workload's
/// seed and a block index (two big-endian UInt64), the answer the 4 KiB block, as `DownloadBlock.write`
/// makes it. The server holds no state, so a client that moved to another host simply reconnects.
enum BlockService {
    static let requestSize = 16

    /// Serves blocks to every client that connects, each on a thread of its own, until the process ends.
    /// Prints the throughput served every second when `report` is set.
    static func serve(on listener: Listener, report: Bool) throws -> Never {
        let served = Atomic<Int>(0)
        if report {
            Thread.detachNewThread {
                var last = 0
                var second = 0
                while true {
                    sleep(1)
                    second += 1
                    let total = served.load(ordering: .relaxed)
                    printLine(String(format: "serve-blocks: t=%ds %.2f MB/s (%d blocks in total)", second, Double(total - last) * Double(DownloadBlock.size) / 1e6, total))
                    last = total
                }
            }
        }
        while true {
            let connection = try listener.accept()
            Thread.detachNewThread {
                let request = UnsafeMutableRawBufferPointer.allocate(byteCount: requestSize, alignment: 8)
                let block = UnsafeMutableRawBufferPointer.allocate(byteCount: DownloadBlock.size, alignment: 8)
                defer { request.deallocate(); block.deallocate() }
                while (try? connection.receiveBytes(into: request)) != nil {
                    let seed = UInt64(bigEndian: request.load(fromByteOffset: 0, as: UInt64.self))
                    let index = UInt64(bigEndian: request.load(fromByteOffset: 8, as: UInt64.self))
                    DownloadBlock.write(seed: seed, index: index, into: block)
                    guard (try? connection.sendBytes(UnsafeRawBufferPointer(block))) != nil else { return }
                    served.add(1, ordering: .relaxed)
                }
            }
        }
    }
}

/// Fetches `download` blocks from a `ferry serve-blocks` server, reconnecting when the link breaks.
///
/// The bytes land in a buffer of its own and are then copied into the region, so no system call writes
/// into the tracked region (the mprotect tracker would make such a write fail with EFAULT).
final class NetworkBlockSource: BlockSource {
    let server: Endpoint
    let seed: UInt64
    private let connection = Mutex<Connection?>(nil)

    init(server: Endpoint, seed: UInt64) {
        self.server = server
        self.seed = seed
    }

    func receive(block index: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(WorkloadError) {
        let request = UnsafeMutableRawBufferPointer.allocate(byteCount: BlockService.requestSize, alignment: 8)
        let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: DownloadBlock.size, alignment: 8)
        defer { request.deallocate(); staging.deallocate() }
        request.storeBytes(of: seed.bigEndian, toByteOffset: 0, as: UInt64.self)
        request.storeBytes(of: index.bigEndian, toByteOffset: 8, as: UInt64.self)
        var lastError = ""
        for attempt in 0..<5 {
            if attempt > 0 { usleep(UInt32(100_000 * attempt)) }
            let link = connection.withLock { $0 } ?? (try? Connection.connect(to: server, timeoutSeconds: 5))
            var done = false
            if let link {
                do {
                    try link.sendBytes(UnsafeRawBufferPointer(request))
                    try link.receiveBytes(into: staging)
                    done = true
                } catch {
                    lastError = "\(error)"
                }
            } else {
                lastError = "cannot connect"
            }
            connection.withLock { $0 = done ? link : nil }
            if done {
                buffer.copyMemory(from: UnsafeRawBufferPointer(staging))
                return
            }
        }
        throw .source("block \(index) from \(server): \(lastError)")
    }
}

/// `ferry serve-blocks`: the server the `download` workload fetches its blocks from.
struct ServeBlocksCommand: Command {
    static let path = ["serve-blocks"]
    static let summary = "Serve the download workload's blocks over TCP (run it on the business network)."
    static let options = [
        OptionSpec("listen", "ADDR:PORT", "Where to serve.", default: "required"),
        OptionSpec("quiet", nil, "Do not print the throughput every second."),
    ]

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let text = try arguments.required("listen")
        guard let endpoint = Endpoint(text) else { throw UsageError("--listen \(text): expected ADDR:PORT") }
        let listener = try Listener(on: endpoint)
        printLine("serve-blocks: listening on \(listener.endpoint)")
        try BlockService.serve(on: listener, report: !arguments.has("quiet"))
    }
}
