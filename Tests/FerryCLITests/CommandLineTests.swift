import FerryTestSupport
import Testing

/// These drive the real `ferry` binary and check its output and exit status.
@Suite struct CommandLineTests {
    @Test func helpListsTheCommands() throws {
        let run = try runFerry(["--help"])
        #expect(run.status == 0)
        #expect(run.standardOutput.contains("bench tracking"))
    }

    @Test func badUsageExits64WithAHint() throws {
        let unknown = try runFerry(["fly"])
        #expect(unknown.status == 64)
        #expect(unknown.standardError.contains("unknown command"))
        let badValue = try runFerry(["bench", "tracking", "--region-size", "huge"])
        #expect(badValue.status == 64)
        #expect(badValue.standardError.contains("not a size"))
        let badTracker = try runFerry(["bench", "tracking", "--tracker", "soft-dirty"])
        #expect(badTracker.status == 64)
    }

    @Test func benchTrackingMeasuresEveryBackendAndWritesJSON() throws {
        let path = "/tmp/ferry-bench-tracking-\(getpid()).json"
        defer { unlink(path) }
        let run = try runFerry([
            "bench", "tracking", "--runs", "1", "--region-size", "64MiB", "--fault-pages", "256", "--json", path,
        ])
        #expect(run.status == 0, "\(run.standardError)")
        let data = try #require(FileManager.default.contents(atPath: path))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["untracked_ns"] as? Double ?? 0 > 0)
        let backends = try #require(object["backends"] as? [[String: Any]])
        #expect(backends.map { $0["name"] as? String } == ["uffd-async", "uffd-sync", "mprotect"])
        for backend in backends {
            #expect(backend["available"] as? Bool == true, "\(backend)")
            #expect((backend["fault_ns"] as? Double ?? 0) > 0)
            #expect((backend["baseline_ns"] as? Double ?? 0) > 0)
            #expect((backend["collect_ms_per_gib"] as? Double ?? 0) > 0)
            // Every 4th page of 64 MiB was written: all of them must be reported.
            #expect((backend["collect_pages_reported"] as? Int ?? 0) >= 4096)
        }
    }
}
import Foundation
