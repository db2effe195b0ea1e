#if canImport(Glibc)
import Glibc
#endif
public import FerrySystem
import Synchronization

/// Threads that write random 8-byte words into random pages of a range until stopped.
///
/// Each writer is a real OS thread (not a task), so writes race with the caller exactly as a workload's would.
public final class RandomWriters: Sendable {
    private let stopFlag = Atomic<Bool>(false)
    private let written = Atomic<Int>(0)
    private let threads: Mutex<[pthread_t]> = Mutex([])

    /// Starts `count` writers over `range`.
    public init(count: Int, range: MemoryRange) {
        for index in 0..<count {
            let context = WriterContext(owner: self, range: range, seed: UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15)
            let box = Unmanaged.passRetained(context).toOpaque()
            var thread = pthread_t()
            let result = pthread_create(&thread, nil, { raw in
                let context = Unmanaged<WriterContext>.fromOpaque(raw!).takeRetainedValue()
                context.run()
                return nil
            }, box)
            precondition(result == 0, "pthread_create failed: \(result)")
            threads.withLock { $0.append(thread) }
        }
    }

    /// Stops and joins every writer. Returns the number of writes made.
    @discardableResult
    public func stop() -> Int {
        stopFlag.store(true, ordering: .releasing)
        for thread in threads.withLock({ $0 }) { pthread_join(thread, nil) }
        threads.withLock { $0.removeAll() }
        return written.load(ordering: .acquiring)
    }

    fileprivate var shouldStop: Bool { stopFlag.load(ordering: .relaxed) }
    fileprivate func add(_ count: Int) { written.add(count, ordering: .relaxed) }
}

private final class WriterContext: Sendable {
    let owner: RandomWriters
    let range: MemoryRange
    let seed: UInt64

    init(owner: RandomWriters, range: MemoryRange, seed: UInt64) {
        self.owner = owner
        self.range = range
        self.seed = seed
    }

    func run() {
        var random = SplitMix64(seed: seed)
        let words = range.byteCount / 8
        let base = range.baseAddress.assumingMemoryBound(to: UInt64.self)
        var count = 0
        while !owner.shouldStop {
            for _ in 0..<64 {
                let value = random.next()
                base[Int(value % UInt64(words))] = value
            }
            count += 64
            usleep(20)  // a workload's pace, not a memory-bandwidth test: leaves the collector CPU time
        }
        owner.add(count)
    }
}

/// Turns off the Swift runtime's crash backtracer for child processes started from now on (exit tests
/// that crash on purpose): symbolicating a deliberate crash is slow and can outlive the test.
public func disableBacktracesInChildProcesses() {
    setenv("SWIFT_BACKTRACE", "enable=no", 1)
}
