import FerryAuth
import FerrySystem
import FerryTestSupport
import FerryTransport
import FerryWire
import Foundation
import Testing

/// Sealed streams over real loopback sockets: what goes in comes out, nothing of it is readable on the wire,
/// and every change an attacker on the path can make is detected.
@Suite struct SealingTests {
    let key = try! PresharedKey(bytes: Array(0..<32))

    /// A region-like buffer of `pages` pages with a recognisable pattern (`"SECRET-PAGE-<n>"` repeated).
    static func pattern(pages: Int) -> [UInt8] {
        (0..<pages).flatMap { page in
            let text = Array("SECRET-PAGE-\(page)-".utf8)
            return (0..<4096).map { text[$0 % text.count] }
        }
    }

    /// The destination: authenticates, then reads `frames` page frames into a buffer; returns what it read or
    /// the error it stopped with, and the encryption the source chose.
    static func destination(
        listener: Listener, key: PresharedKey, pages: Int
    ) -> Spawned<(encryption: StreamEncryption?, bytes: [UInt8], error: TransportError?)> {
        Spawned {
            do {
                let connection = try listener.accept(timeoutSeconds: 10, connectionTimeoutSeconds: 5)
                let encryption = try PeerAuthentication.challengeSource(on: connection, key: key)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pages * 4096, alignment: 4096)
                defer { buffer.deallocate() }
                let range = MemoryRange(start: UInt(bitPattern: buffer.baseAddress!), byteCount: pages * 4096)
                do {
                    while true {
                        switch try connection.receive(while: "test") {
                        case .pageData(let first, let count): try connection.receivePages(into: range, first: first, count: count)
                        case .roundEnd: return (encryption, Array(buffer), nil)
                        case let other: return (encryption, [], .unexpected(peer: "", expected: "pages", got: "\(other)"))
                        }
                    }
                } catch let error as TransportError {
                    return (encryption, [], error)
                }
            } catch {
                return (nil, [], .unexpected(peer: "", expected: "a handshake", got: "\(error)"))
            }
        }
    }

    /// The source: authenticates with `encryption` and sends `bytes` as page frames of 256 pages, then a round end.
    static func send(_ bytes: [UInt8], to port: Int, key: PresharedKey, encryption: StreamEncryption) throws {
        let connection = try Connection.connect(to: Endpoint(host: "127.0.0.1", port: UInt16(port)), timeoutSeconds: 5)
        try PeerAuthentication.proveToDestination(on: connection, key: key, encryption: encryption)
        #expect(connection.isSealed == (encryption == .aes256gcm))
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 4096)  // pages are page-aligned
        defer { raw.deallocate() }
        raw.copyBytes(from: bytes)
        do {
            let range = MemoryRange(start: UInt(bitPattern: raw.baseAddress!), byteCount: raw.count)
            for first in stride(from: 0, to: range.pageCount, by: 256) {
                try connection.sendPages(of: range, first: first, count: Swift.min(256, range.pageCount - first))
            }
        }
        try connection.send(.roundEnd(RoundSummary(round: 0, pages: 0, zeroPages: 0, bytes: 0, final: false)))
    }

    @Test(arguments: StreamEncryption.allCases)
    func whatIsSentArrivesAndOnlyThePlainStreamCanBeRead(encryption: StreamEncryption) throws {
        let pages = 1200  // 4.7 MiB: several records, some larger than a frame's header buffer
        let listener = try Listener(on: Endpoint(host: "127.0.0.1", port: 0))
        let relay = try TamperingRelay(targetPort: Int(listener.endpoint.port), attack: nil)
        let destination = Self.destination(listener: listener, key: key, pages: pages)
        let bytes = Self.pattern(pages: pages)
        try Self.send(bytes, to: relay.port, key: key, encryption: encryption)
        let received = destination.join()
        #expect(received.error == nil, "\(String(describing: received.error))")
        #expect(received.encryption == encryption, "the destination learns the source's choice from its MAC")
        #expect(received.bytes == bytes, "every page arrives intact")
        let wire = relay.capturedBytes
        #expect(wire.count > bytes.count)
        let marker = Array("SECRET-PAGE-7".utf8)
        let visible = Data(wire).range(of: Data(marker)) != nil
        #expect(visible == (encryption == .none), "sealed, nothing of the pages shows on the wire; plain, they do")
    }

    /// Each change on the path is caught by the destination before it can use the bytes.
    @Test(arguments: TamperingRelay.Attack.allCases)
    func everyTamperingIsDetected(attack: TamperingRelay.Attack) throws {
        let pages = 1200
        let listener = try Listener(on: Endpoint(host: "127.0.0.1", port: 0))
        let relay = try TamperingRelay(targetPort: Int(listener.endpoint.port), attack: attack, unit: 4)
        let destination = Self.destination(listener: listener, key: key, pages: pages)
        _ = try? Self.send(Self.pattern(pages: pages), to: relay.port, key: key, encryption: .aes256gcm)
        let received = destination.join()
        #expect(relay.didAttack)
        switch (attack, received.error) {
        case (.cutMidUnit, .closed?): break
        case (.cutMidUnit, let error):
            Issue.record("a cut stream must end as closed, got \(String(describing: error))")
        case (_, .tampered(_, _, let reason)?):
            #expect(reason.contains("tag") || reason.contains("length"), "\(reason)")
            #expect("\(received.error!)".contains("failed authentication"))
        case (_, let error):
            Issue.record("\(attack) was not detected as tampering: \(String(describing: error)); \(received.bytes.count) bytes delivered")
        }
        #expect(received.bytes.isEmpty, "nothing was delivered as a whole")
    }

    @Test func sealingKeysDifferPerDirectionAndMatchAcrossSides() throws {
        let nd = Array(repeating: UInt8(1), count: 32)
        let ns = Array(repeating: UInt8(2), count: 32)
        let source = try PeerAuthentication.sealingKeys(key: key, destinationNonce: nd, sourceNonce: ns, role: .source)
        let destination = try PeerAuthentication.sealingKeys(key: key, destinationNonce: nd, sourceNonce: ns, role: .destination)
        #expect(source.send == destination.receive && source.receive == destination.send)
        #expect(source.send != source.receive)
        let other = try PeerAuthentication.sealingKeys(key: key, destinationNonce: ns, sourceNonce: nd, role: .source)
        #expect(other.send != source.send, "fresh nonces, fresh keys")
    }

    /// Key rotation: a destination holding the current and the next key takes a source with either, sealed with
    /// the key that source holds, and refuses any other key.
    @Test func aDestinationWithTwoKeysAcceptsEitherAndNothingElse() throws {
        let next = try PresharedKey(bytes: Array(100..<132))
        let stranger = try PresharedKey(bytes: Array(repeating: 9, count: 32))
        for (sourceKey, accepted) in [(key, true), (next, true), (stranger, false)] {
            let listener = try Listener(on: Endpoint(host: "127.0.0.1", port: 0))
            let keys = [key, next]
            let destination = Spawned { () -> Bool in
                guard let connection = try? listener.accept(timeoutSeconds: 10, connectionTimeoutSeconds: 5),
                      (try? PeerAuthentication.challengeSource(on: connection, keys: keys)) == .aes256gcm,
                      case .digestRequest? = try? connection.receive(while: "test") else { return false }
                return true
            }
            let connection = try Connection.connect(to: listener.endpoint, timeoutSeconds: 5)
            let source = Result { () throws(AuthError) in try PeerAuthentication.proveToDestination(on: connection, key: sourceKey) }
            if case .success = source { try connection.send(.digestRequest) }
            #expect(destination.join() == accepted)
            #expect(((try? source.get()) != nil) == accepted)
        }
    }
}
