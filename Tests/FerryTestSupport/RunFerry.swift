public import Foundation
import Dispatch

/// The result of running the built `ferry` executable.
public struct FerryRun: Sendable {
    public let status: Int32
    public let standardOutput: String
    public let standardError: String
}

/// Where the `ferry` binary built next to the test bundle is.
public func ferryExecutableURL() -> URL {
    // The test bundle lives in the build products folder, beside the executables.
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    return bundle.appendingPathComponent("ferry")
}

/// Runs `ferry` with `arguments` and waits for it, capturing its output.
public func runFerry(_ arguments: [String], environment: [String: String]? = nil) throws -> FerryRun {
    let process = Process()
    process.executableURL = ferryExecutableURL()
    process.arguments = arguments
    if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Read both pipes before waiting, so a chatty child never blocks on a full pipe.
    let errData = Mutex(Data())
    let errDone = DispatchSemaphore(value: 0)
    DispatchQueue.global().async {
        let data = err.fileHandleForReading.readDataToEndOfFile()
        errData.withLock { $0 = data }
        errDone.signal()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    errDone.wait()
    process.waitUntilExit()
    return FerryRun(
        status: process.terminationStatus,
        standardOutput: String(decoding: outData, as: UTF8.self),
        standardError: String(decoding: errData.withLock { $0 }, as: UTF8.self))
}
import Synchronization
