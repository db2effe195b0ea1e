#if canImport(Glibc)
import Glibc
#endif
@testable import FerryAuth
import FerryTransport
import FerryWire
import Testing

/// The challenge–response over real loopback sockets, each side on its own thread.
@Suite struct HandshakeTests {
    let key = try! PresharedKey(bytes: Array(0..<32))
    let otherKey = try! PresharedKey(bytes: Array(repeating: 7, count: 32))

    /// Both sides through the real API: the destination's result and the source's result.
    func handshake(
        destinationKey: PresharedKey, sourceKey: PresharedKey
    ) throws -> (destination: Result<Void, AuthError>, source: Result<Void, AuthError>, sourcePort: String) {
        let listener = try Listener(on: Endpoint(host: "127.0.0.1", port: 0))
        let destination = Spawned { () -> (Result<Void, AuthError>, String) in
            do {
                let connection = try listener.accept(timeoutSeconds: 10, connectionTimeoutSeconds: 10)
                let result = Result { () throws(AuthError) in _ = try PeerAuthentication.challengeSource(on: connection, key: destinationKey) }
                if case .success = result {
                    // The stream goes on after the handshake: the next frame arrives intact.
                    guard case .digestRequest = try connection.receive(while: "test") else { return (.failure(.crypto(peer: "", "no frame")), "") }
                }
                return (result, connection.peer)
            } catch {
                return (.failure(.crypto(peer: "", "test setup: \(error)")), "")
            }
        }
        let connection = try Connection.connect(to: listener.endpoint, timeoutSeconds: 10)
        let source = Result { () throws(AuthError) in try PeerAuthentication.proveToDestination(on: connection, key: sourceKey) }
        if case .success = source { try connection.send(.digestRequest) }
        let (destinationResult, peer) = destination.join()
        return (destinationResult, source, peer)
    }

    @Test func theSameKeyOnBothSidesAuthenticatesBothWays() throws {
        let outcome = try handshake(destinationKey: key, sourceKey: try PresharedKey(bytes: Array(0..<32)))
        #expect(throws: Never.self) { try outcome.destination.get() }
        #expect(throws: Never.self) { try outcome.source.get() }
    }

    @Test func aWrongKeyIsRefusedWithTheAuthenticationCodeAndThePeersAddress() throws {
        let outcome = try handshake(destinationKey: key, sourceKey: otherKey)
        guard case .failure(let destinationError) = outcome.destination, case .failure(let sourceError) = outcome.source else {
            Issue.record("a wrong key was accepted: \(outcome)")
            return
        }
        #expect(destinationError == .peerWithoutKey(peer: outcome.sourcePort, role: .source))
        #expect(destinationError.peer.hasPrefix("127.0.0.1:"))
        #expect("\(destinationError)".contains("refused \(outcome.sourcePort)"))
        guard case .refused(_, let refusal) = sourceError else {
            Issue.record("the source did not get the refusal: \(sourceError)")
            return
        }
        #expect(refusal.code == .authentication)
        #expect(refusal.reason.contains("--key"))
    }

    // MARK: A hand-made source

    /// Plays the source over a raw socket: reads the challenge, then calls `respond` with it and the
    /// socket. Returns what `challengeSource` did and what the raw source read afterwards, if anything.
    func rawSource(
        timeoutSeconds: Double = 10,
        _ respond: @escaping @Sendable (_ destinationNonce: [UInt8], _ socket: RawSocket) throws -> Void
    ) throws -> (error: AuthError?, reply: Frame?) {
        let listener = try Listener(on: Endpoint(host: "127.0.0.1", port: 0))
        let destinationKey = key
        let destination = Spawned { () -> Result<Void, AuthError>? in
            guard let connection = try? listener.accept(timeoutSeconds: 10, connectionTimeoutSeconds: timeoutSeconds) else { return nil }
            return Result { () throws(AuthError) in _ = try PeerAuthentication.challengeSource(on: connection, key: destinationKey) }
        }
        let socket = try RawSocket.connect(port: listener.endpoint.port)
        let challenge = try socket.receiveFrameBytes()
        guard case .auth(let nonce, let mac) = try decode(challenge), nonce.count == 32, mac.isEmpty else {
            throw AuthTestError.badChallenge(challenge)
        }
        try respond(nonce, socket)
        let result = try #require(destination.join())
        // Whatever the destination answered (a refusal, or its own proof).
        let reply = try? decode(try socket.receiveFrameBytes())
        if case .failure(let error) = result { return (error, reply) }
        return (nil, reply)
    }

    func validResponse(to destinationNonce: [UInt8], sourceNonce: [UInt8] = Array(repeating: 0xA5, count: 32)) throws -> [UInt8] {
        let mac = try PeerAuthentication.mac(key: key, role: .source, destinationNonce: destinationNonce, sourceNonce: sourceNonce, peer: "test")
        return FrameCodec.encode(.auth(nonce: sourceNonce, mac: mac))
    }

    @Test func aHandMadeValidResponseIsAccepted() throws {
        let outcome = try rawSource { nonce, socket in try socket.send(try validResponse(to: nonce)) }
        #expect(outcome.error == nil)
        guard case .auth(let nonce, let mac) = outcome.reply else {
            Issue.record("no proof from the destination: \(String(describing: outcome.reply))")
            return
        }
        #expect(nonce.isEmpty && mac.count == 32)
    }

    /// If the MACs were not compared, these would pass: every byte of the MAC matters.
    @Test(arguments: 0..<32) func aMACWithOneBitFlippedIsRefused(byte: Int) throws {
        let outcome = try rawSource { nonce, socket in
            var response = try validResponse(to: nonce)
            response[response.count - 32 + byte] ^= 1 << UInt8(byte % 8)
            try socket.send(response)
        }
        #expect(outcome.error == .peerWithoutKey(peer: outcome.error?.peer ?? "", role: .source))
        guard case .helloReply(.refused(let refusal)) = outcome.reply else {
            Issue.record("no refusal: \(String(describing: outcome.reply))")
            return
        }
        #expect(refusal.code == .authentication)
    }

    @Test func aResponseThatEchoesTheDestinationsNonceIsRefused() throws {
        let outcome = try rawSource { nonce, socket in try socket.send(try validResponse(to: nonce, sourceNonce: nonce)) }
        #expect(outcome.error == .peerWithoutKey(peer: outcome.error?.peer ?? "", role: .source))
    }

    @Test func aSourceThatSendsHelloFirstIsRefused() throws {
        let hello = Hello(
            buildIdentity: "old ferry", architecture: "x86_64", pageSize: 4096, regionBase: 0, regionSize: 4096,
            workloadName: "hotset", layoutVersion: 2, sharedMountToken: "t", sharedMountTokenValue: "v", generation: 1
        )
        let outcome = try rawSource { _, socket in try socket.send(FrameCodec.encode(.hello(hello))) }
        guard case .unexpected(_, _, let got) = outcome.error else {
            Issue.record("expected .unexpected, got \(String(describing: outcome.error))")
            return
        }
        #expect(got == "hello")
        guard case .helloReply(.refused(let refusal)) = outcome.reply else {
            Issue.record("no refusal: \(String(describing: outcome.reply))")
            return
        }
        #expect(refusal.code == .authentication)
    }

    @Test(arguments: [
        ("short nonce", FrameCodec.encode(.auth(nonce: [1, 2, 3], mac: Array(repeating: 0, count: 32)))),
        ("no MAC", FrameCodec.encode(.auth(nonce: Array(repeating: 1, count: 32), mac: []))),
        ("long MAC", FrameCodec.encode(.auth(nonce: Array(repeating: 1, count: 32), mac: Array(repeating: 0, count: 64)))),
        ("abort", FrameCodec.encode(.abort(reason: "no"))),
        ("pages", FrameCodec.encode(.pageData(firstPage: 0, pageCount: 1)) + Array(repeating: 0xEE, count: 4096)),
    ])
    func aSourceThatSendsTheWrongFrameIsRefused(what: String, bytes: [UInt8]) throws {
        let outcome = try rawSource { _, socket in try socket.send(bytes) }
        guard case .unexpected = outcome.error else {
            Issue.record("\(what): expected .unexpected, got \(String(describing: outcome.error))")
            return
        }
        guard case .helloReply(.refused(let refusal)) = outcome.reply else {
            Issue.record("\(what): no refusal: \(String(describing: outcome.reply))")
            return
        }
        #expect(refusal.code == .authentication)
    }

    @Test(arguments: 0..<20) func aSourceThatSendsGarbageGetsAClearError(seed: Int) throws {
        var generator = SystemRandomNumberGenerator()
        let count = seed < 10 ? seed * 7 + 1 : Int.random(in: 1...200, using: &generator)
        var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
        if seed % 2 == 0 { bytes.insert(contentsOf: [0, 0, 0, UInt8(count + 1), 12], at: 0) }  // a header that claims auth
        let garbage = bytes
        let outcome = try rawSource(timeoutSeconds: 0.5) { _, socket in
            try socket.send(garbage)
            shutdown(socket.fd, CInt(SHUT_WR))
        }
        let error = try #require(outcome.error, "garbage was accepted: \(bytes)")
        #expect(!"\(error)".isEmpty)
    }

    @Test func aSourceThatSendsNothingTimesOut() throws {
        let outcome = try rawSource(timeoutSeconds: 0.3) { _, _ in }
        guard case .transport(_, .timedOut) = outcome.error else {
            Issue.record("expected a timeout, got \(String(describing: outcome.error))")
            return
        }
    }

    /// A source that sends the first `k` bytes of a valid response and disconnects, for every `k`.
    @Test func aSourceThatDisconnectsAtEveryByteOffsetGetsAClearError() throws {
        let length = 5 + 2 + 32 + 2 + 32
        for offset in 0..<length {
            let outcome = try rawSource { nonce, socket in
                let response = try validResponse(to: nonce)
                #expect(response.count == length)
                try socket.send(response.prefix(offset))
                shutdown(socket.fd, CInt(SHUT_RDWR))
            }
            guard case .transport(let peer, .closed) = outcome.error else {
                Issue.record("offset \(offset): expected .closed, got \(String(describing: outcome.error))")
                continue
            }
            #expect(peer.hasPrefix("127.0.0.1:"))
        }
    }

    // MARK: A hand-made destination

    /// Plays the destination over a raw socket; returns what `proveToDestination` did.
    func rawDestination(_ play: @escaping @Sendable (_ socket: RawSocket) throws -> Void) throws -> AuthError? {
        let (server, port) = try RawSocket.listen()
        let sourceKey = key
        let source = Spawned { () -> Result<Void, AuthError>? in
            guard let connection = try? Connection.connect(to: Endpoint(host: "127.0.0.1", port: port), timeoutSeconds: 10) else { return nil }
            return Result { () throws(AuthError) in try PeerAuthentication.proveToDestination(on: connection, key: sourceKey) }
        }
        let socket = try server.accept()
        try play(socket)
        shutdown(socket.fd, CInt(SHUT_RDWR))
        if case .failure(let error) = try #require(source.join()) { return error }
        return nil
    }

    @Test func aDestinationWithoutTheKeyIsNotTrusted() throws {
        let error = try rawDestination { socket in
            try socket.send(FrameCodec.encode(.auth(nonce: Array(repeating: 3, count: 32), mac: [])))
            _ = try socket.receiveFrameBytes()
            try socket.send(FrameCodec.encode(.auth(nonce: [], mac: Array(repeating: 0, count: 32))))
        }
        #expect(error == .peerWithoutKey(peer: error?.peer ?? "", role: .destination))
    }

    @Test func aDestinationThatDisconnectsAtEveryByteOffsetGivesTheSourceAClearError() throws {
        let destinationNonce = Array(repeating: UInt8(9), count: 32)
        let challenge = FrameCodec.encode(.auth(nonce: destinationNonce, mac: []))
        let key = key
        // Through the challenge, then through the proof (computed from the source's nonce).
        for offset in 0..<(challenge.count + 5 + 2 + 2 + 32) {
            let error = try rawDestination { socket in
                guard offset >= challenge.count else {
                    try socket.send(challenge.prefix(offset))
                    return
                }
                try socket.send(challenge)
                guard case .auth(let sourceNonce, _) = try decode(try socket.receiveFrameBytes()) else { return }
                let proof = try PeerAuthentication.mac(
                    key: key, role: .destination, destinationNonce: destinationNonce, sourceNonce: sourceNonce, peer: "test")
                try socket.send(FrameCodec.encode(.auth(nonce: [], mac: proof)).prefix(offset - challenge.count))
            }
            guard case .transport(_, .closed) = error else {
                Issue.record("offset \(offset): expected .closed, got \(String(describing: error))")
                continue
            }
        }
    }
}

enum AuthTestError: Error { case badChallenge([UInt8]) }

func decode(_ bytes: [UInt8]) throws -> Frame {
    let header = try FrameCodec.decodeHeader(bytes)
    return try bytes.dropFirst(FrameCodec.headerSize).withUnsafeBytes { try FrameCodec.decodeBody(type: header.type, $0) }
}
