#if canImport(Glibc)
import Glibc
#endif
import FerryTestSupport
import Foundation
import Testing

/// The control socket of a ferry process serves only its owner and root: its private directory and mode
/// (the file system's guard) and the peer's uid (`SO_PEERCRED`, Ferry's own guard).
@Suite struct ControlSocketTests {
    @Test func theSocketIsMode0600InADirectoryOnlyItsOwnerCanEnter() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let control = lab.socket("a")
        let source = try lab.startSource(name: "a")

        #expect(try FileFacts(control).kind == S_IFLNK)
        #expect(readLink(control) == "a.sock.d/control")
        let directory = try FileFacts(control + ".d")
        #expect(directory.kind == S_IFDIR)
        #expect(directory.permissions == 0o700)
        #expect(directory.owner == geteuid())
        let socket = try FileFacts(control + ".d/control")
        #expect(socket.kind == S_IFSOCK)
        #expect(socket.permissions == 0o600)
        #expect(socket.owner == geteuid())

        let status = try runFerry(["status", "--control", control])
        #expect(status.status == 0, "\(status.standardError)")
        #expect(status.standardOutput.contains("running"))
        let stop = try runFerry(["stop", "--control", control])
        #expect(stop.status == 0, "\(stop.standardError)")
        source.waitUntilExit()
        // Everything the process made is gone.
        #expect((try? FileFacts(control)) == nil)
        #expect((try? FileFacts(control + ".d")) == nil)
    }

    @Test(.enabled(if: OtherUser.canRunFerry, OtherUser.skipReason))
    func anotherUserIsRefusedByTheFileSystemAndByFerry() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        // The lab is under /tmp: let the other user traverse it, so what refuses is the socket's own guard.
        chmod(lab.directory, 0o755)
        let control = lab.socket("a")
        let source = try lab.startSource(name: "a")
        let me = geteuid()

        // 1. The file system: the private directory keeps the other user from the socket.
        let blocked = try runFerry(as: OtherUser.nobody, ["status", "--control", control])
        #expect(blocked.status == 1, "\(blocked.output)")
        #expect(blocked.output.contains("Permission denied (EACCES)"), "\(blocked.output)")
        #expect(blocked.output.contains("accepts only its owner (uid \(me)) and root; you are uid \(OtherUser.nobody)"), "\(blocked.output)")

        // 2. Ferry's own check, with the directory and the socket opened up by hand.
        chmod(control + ".d", 0o755)
        chmod(control + ".d/control", 0o666)
        let refusal = "the control socket of this ferry process (pid \(source.processIdentifier), owned by uid \(me)) accepts only "
            + "its owner and root; you are uid \(OtherUser.nobody): run the command as uid \(me) or as root"
        for command in ["stop", "status"] {
            let refused = try runFerry(as: OtherUser.nobody, [command, "--control", control])
            #expect(refused.status == 1, "\(refused.output)")
            #expect(refused.output.contains("ferry \(command): \(refusal)"), "\(refused.output)")
        }

        // Nothing of the refused requests was done: the workload still runs, and its owner is served.
        #expect(source.isRunning)
        let status = try runFerry(["status", "--control", control])
        #expect(status.status == 0, "\(status.standardError)")
        #expect(status.standardOutput.contains("running"))
        #expect(try runFerry(["stop", "--control", control]).status == 0)
        source.waitUntilExit()
    }

    @Test(.enabled(if: OtherUser.canRunFerry && OtherUser.canPickAnyUid, OtherUser.skipReason))
    func theOwnerAndRootAreServedAndAThirdUserIsNot() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let owner = OtherUser.nobody
        let third: UInt32 = 65533
        // The workload runs as nobody: it creates its socket and key in directories it owns.
        chown(lab.directory, owner, owner)
        chown(lab.shared, owner, owner)
        chmod(lab.directory, 0o755)
        let control = lab.socket("n")
        let source = try lab.startProgram(
            OtherUser.command(uid: owner)[0],
            Array(OtherUser.command(uid: owner).dropFirst())
                + [ferryExecutableURL().path, "run", "--region-size", "16MiB", "--shared-dir", lab.shared, "--control", control],
            log: "n")
        try lab.waitForSocket(control)
        let directory = try FileFacts(control + ".d")
        #expect(directory.owner == owner)
        #expect(directory.permissions == 0o700)

        let byOwner = try runFerry(as: owner, ["status", "--control", control])
        #expect(byOwner.status == 0, "\(byOwner.output)")
        #expect(byOwner.output.contains("running"))
        let byRoot = try runFerry(["status", "--control", control])
        #expect(byRoot.status == 0, "\(byRoot.standardError)")
        #expect(byRoot.standardOutput.contains("running"))

        let blocked = try runFerry(as: third, ["status", "--control", control])
        #expect(blocked.status == 1, "\(blocked.output)")
        #expect(blocked.output.contains("accepts only its owner (uid \(owner)) and root; you are uid \(third)"), "\(blocked.output)")
        chmod(control + ".d", 0o755)
        chmod(control + ".d/control", 0o666)
        let refused = try runFerry(as: third, ["stop", "--control", control])
        #expect(refused.status == 1, "\(refused.output)")
        #expect(
            refused.output.contains(
                "the control socket of this ferry process (pid \(source.processIdentifier), owned by uid \(owner)) accepts only its "
                    + "owner and root; you are uid \(third): run the command as uid \(owner) or as root"), "\(refused.output)")
        #expect(source.isRunning)

        #expect(try runFerry(["stop", "--control", control]).status == 0)
        source.waitUntilExit()
        #expect((try? FileFacts(control)) == nil)
        #expect((try? FileFacts(control + ".d")) == nil)
    }

    @Test func aLeftoverSocketIsReplacedButALiveOneIsNotTaken() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let control = lab.socket("a")
        let first = try lab.startSource(name: "a")

        let other = lab.directory + "/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let second = try runFerry(["run", "--region-size", "16MiB", "--shared-dir", other, "--control", control])
        #expect(second.status == 1)
        #expect(second.standardError.contains("another process serves the control socket \(control)"), "\(second.standardError)")
        #expect(try runFerry(["status", "--control", control]).status == 0, "the first process keeps its socket")

        // A process killed outright leaves its link, directory and socket; the next one replaces them.
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        #expect(try FileFacts(control + ".d/control").kind == S_IFSOCK)
        // (The refused run above took `other`: it started its workload before it found the socket taken.)
        let third = lab.directory + "/third"
        try FileManager.default.createDirectory(atPath: third, withIntermediateDirectories: true)
        let next = try lab.start(["run", "--region-size", "16MiB", "--shared-dir", third, "--control", control], log: "next")
        // The leftover link is there already: wait for the new process to answer.
        var status = try runFerry(["status", "--control", control, "--json"])
        for _ in 0..<200 where status.status != 0 && next.isRunning {
            usleep(50_000)
            status = try runFerry(["status", "--control", control, "--json"])
        }
        #expect(status.status == 0, "\(status.standardError) \(lab.log("next"))")
        let object = try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [String: Any]
        #expect(object?["pid"] as? Int == Int(next.processIdentifier), "\(status.standardOutput)")
        #expect(try runFerry(["stop", "--control", control]).status == 0)
        next.waitUntilExit()
    }

    @Test func aDirectoryOthersCanEnterIsRefused() throws {
        let lab = try Lab()
        defer { lab.tearDown() }
        let control = lab.socket("a")
        #expect(mkdir(control + ".d", 0o755) == 0)
        chmod(control + ".d", 0o755)
        let run = try runFerry(["run", "--region-size", "16MiB", "--shared-dir", lab.shared, "--control", control])
        #expect(run.status == 1)
        #expect(
            run.standardError.contains("\(control).d is a directory of uid \(geteuid()) with mode 0755: the control socket lives in a directory only its owner"),
            "\(run.standardError)")
        #expect((try? FileFacts(control)) == nil)
    }
}

/// Running commands as another uid: util-linux `setpriv` (any uid), else `runuser` (nobody only).
enum OtherUser {
    static let nobody: UInt32 = 65534
    static let setpriv = (["/usr/bin/setpriv", "/bin/setpriv"] as [String]).first { access($0, X_OK) == 0 }
    static let runuser = (["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"] as [String]).first { access($0, X_OK) == 0 }
    static let canPickAnyUid = geteuid() == 0 && setpriv != nil
    /// Root, a tool to switch users, and a `ferry` binary nobody can reach and run (the build folder may sit
    /// in a directory only root can enter).
    static let canRunFerry: Bool = {
        guard geteuid() == 0, setpriv != nil || runuser != nil else { return false }
        return (try? runFerry(as: nobody, ["--help"]).status) == 0
    }()
    static let skipReason: Comment =
        "needs root, util-linux setpriv (or runuser), and a ferry binary the user nobody can run: it runs commands as other uids"

    /// The words that run a command as `uid`.
    static func command(uid: UInt32) -> [String] {
        if let setpriv { return [setpriv, "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "--"] }
        precondition(uid == nobody, "runuser switches to named users only: nobody")
        return [runuser!, "-u", "nobody", "--"]
    }
}

/// Runs `ferry arguments` as `uid`; its exit status and both output streams, together.
func runFerry(as uid: UInt32, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let words = OtherUser.command(uid: uid)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: words[0])
    process.arguments = Array(words.dropFirst()) + [ferryExecutableURL().path] + arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// What `lstat` says of a path: its kind, permission bits and owner.
struct FileFacts {
    let kind: mode_t
    let permissions: mode_t
    let owner: uid_t

    init(_ path: String) throws {
        var status = stat()
        guard lstat(path, &status) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        kind = status.st_mode & S_IFMT
        permissions = status.st_mode & 0o7777
        owner = status.st_uid
    }
}

/// The text of the link at `path`, or nil if it is none.
func readLink(_ path: String) -> String? {
    try? FileManager.default.destinationOfSymbolicLink(atPath: path)
}
