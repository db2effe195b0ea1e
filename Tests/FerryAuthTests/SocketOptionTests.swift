#if canImport(Glibc)
import Glibc
#endif
import FerrySystem
@testable import FerryTransport
import Testing

/// The timeouts rest on socket options (`TCP_USER_TIMEOUT` above all): one that cannot be set is an error that
/// names it, not a connection that silently lacks it.
@Suite struct SocketOptionTests {
    @Test func aSocketOptionThatCannotBeSetIsAnErrorNamingIt() throws {
        // A Unix socket has no TCP options: the first one, TCP_NODELAY, fails.
        var ends: [CInt] = [0, 0]
        #expect(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[1]) }
        do {
            _ = try Connection(socket: ends[0], peer: "unix-pair", maximumBytesPerSecond: nil, timeoutSeconds: 5)
            Issue.record("a Unix socket cannot take TCP options")
        } catch {
            guard case .io(let peer, let failure) = error else { Issue.record("\(error)"); return }
            #expect(peer == "unix-pair")
            #expect(failure.call == "setsockopt(TCP_NODELAY)")
            #expect([EOPNOTSUPP, ENOPROTOOPT].contains(failure.errno.rawValue), "\(failure)")
        }
        #expect(fcntl(ends[0], F_GETFD) == -1, "the socket was closed with the failed connection")
    }
}
