public import FerryTransport
public import FerryWire

/// The challenge–response that proves, before any state moves, that both ends of a migration connection
/// hold the same ``PresharedKey``.
///
/// Three `auth` frames, right after the connection is made and before `hello`:
///
///     destination → source   auth(nonce: Nd, mac: [])                                   challenge
///     source → destination   auth(nonce: Ns, mac: HMAC(key, "ferry-auth-v1 source" 0 Nd Ns))
///     destination → source   auth(nonce: [], mac: HMAC(key, "ferry-auth-v1 destination" 0 Nd Ns))
///
/// Nd and Ns are 32 fresh random bytes each, so no answer can be replayed on another connection, and the
/// role in the transcript keeps one side's answer from serving as the other's. MACs are HMAC-SHA-256 and
/// compared in constant time. When the source's MAC is wrong (or it sends anything else), the destination
/// answers `helloReply(.refused)` with ``Refusal/Code-swift.enum/authentication`` instead of the third
/// frame, so the source can say why it was turned away.
///
/// The source chooses whether the rest of the stream is sealed (``StreamEncryption``) and the choice is part of
/// what both MACs cover (`"ferry-auth-v1 sealed <role>"` instead of `"ferry-auth-v1 <role>"`), so nobody without
/// the key can downgrade it. Sealed, each direction gets its own AES-256-GCM key from HKDF-SHA-256 over the
/// pre-shared key with both nonces as salt (``sealingKeys(key:destinationNonce:sourceNonce:role:)``), and every
/// byte after the third frame travels in sealed records (`Connection.enableSealing`).
public enum PeerAuthentication {
    /// Bytes of each side's nonce.
    public static let nonceLength = 32

    /// The source's side: answers the destination's challenge, then checks that the destination holds
    /// the key too. Call it right after connecting, before sending `hello`.
    /// - Parameters:
    ///   - connection: The new connection to the destination.
    ///   - key: The pre-shared key.
    /// - Throws: `AuthError`; `.refused` when the destination turned the source away (its reason says
    ///   why), `.peerWithoutKey` when the destination could not prove it holds the key.
    ///   - encryption: whether the stream is sealed after the handshake (the default) or left plain.
    public static func proveToDestination(on connection: Connection, key: PresharedKey, encryption: StreamEncryption = .aes256gcm) throws(AuthError) {
        let peer = connection.peer
        let challenge = try receive(on: connection, while: "waiting for the destination's authentication challenge")
        guard case .auth(let destinationNonce, let emptyMAC) = challenge,
            destinationNonce.count == nonceLength, emptyMAC.isEmpty
        else {
            if case .helloReply(.refused(let refusal)) = challenge { throw .refused(peer: peer, refusal) }
            throw .unexpected(peer: peer, expected: "an authentication challenge (auth with a 32-byte nonce)", got: describe(challenge))
        }
        guard let sourceNonce = Crypto.randomBytes(nonceLength) else { throw .crypto(peer: peer, "the random generator failed") }
        let proof = try mac(key: key, role: .source, encryption: encryption, destinationNonce: destinationNonce, sourceNonce: sourceNonce, peer: peer)
        try send(.auth(nonce: sourceNonce, mac: proof), on: connection)

        let answer = try receive(on: connection, while: "waiting for the destination's authentication answer")
        switch answer {
        case .auth(let nonce, let destinationProof) where nonce.isEmpty:
            let expected = try mac(key: key, role: .destination, encryption: encryption, destinationNonce: destinationNonce, sourceNonce: sourceNonce, peer: peer)
            guard Crypto.constantTimeEqual(destinationProof, expected) else {
                try? connection.send(.abort(reason: "the destination did not prove it holds the key"))
                throw .peerWithoutKey(peer: peer, role: .destination)
            }
            if encryption == .aes256gcm {
                try seal(connection, keys: sealingKeys(key: key, destinationNonce: destinationNonce, sourceNonce: sourceNonce, role: .source))
            }
        case .helloReply(.refused(let refusal)):
            throw .refused(peer: peer, refusal)
        default:
            throw .unexpected(peer: peer, expected: "the destination's authentication answer (auth with a MAC)", got: describe(answer))
        }
    }

    /// The destination's side: challenges the source and accepts it only if it proves it holds the key,
    /// then proves the same to the source. Call it right after accepting, before reading `hello`.
    ///
    /// On a wrong MAC or any frame other than the expected `auth`, the source is sent
    /// `helloReply(.refused)` with ``Refusal/Code-swift.enum/authentication`` before this throws; nothing
    /// the source sent is used. The caller logs the error, which names the peer's address.
    /// - Parameters:
    ///   - connection: The connection just accepted.
    ///   - key: The pre-shared key.
    /// - Throws: `AuthError`; `.peerWithoutKey` for a wrong MAC, `.unexpected` for another frame,
    ///   `.transport` for a malformed frame, a timeout or a closed connection.
    /// - Returns: the encryption the source chose (authenticated by its MAC); sealed, the connection is sealed
    ///   from here on.
    @discardableResult
    public static func challengeSource(on connection: Connection, key: PresharedKey) throws(AuthError) -> StreamEncryption {
        try challengeSource(on: connection, keys: [key])
    }

    /// The destination's side with more than one key it accepts (key rotation without downtime: the current
    /// key and the next one): the source's MAC tells which one it holds, and that key is used from then on.
    @discardableResult
    public static func challengeSource(on connection: Connection, keys: [PresharedKey]) throws(AuthError) -> StreamEncryption {
        precondition(!keys.isEmpty, "a destination needs at least one key")
        let peer = connection.peer
        guard let destinationNonce = Crypto.randomBytes(nonceLength) else { throw .crypto(peer: peer, "the random generator failed") }
        try send(.auth(nonce: destinationNonce, mac: []), on: connection)

        let response: Frame
        do {
            response = try receive(on: connection, while: "waiting for the source's authentication response")
        } catch {
            if case .transport(_, .malformed) = error { refuse(connection, "the source sent a malformed frame instead of its authentication response") }
            throw error
        }
        guard case .auth(let sourceNonce, let proof) = response, sourceNonce.count == nonceLength, proof.count == Crypto.macLength else {
            let got = describe(response)
            refuse(
                connection,
                "the source sent \(got) instead of proving it holds the key; give 'ferry migrate' a --key file "
                    + "with the same key as this destination"
            )
            throw .unexpected(peer: peer, expected: "an authentication response (auth with a 32-byte nonce and MAC)", got: got)
        }
        // The MAC tells which key the source holds and which encryption it chose: only a holder of the key can
        // make any of them.
        var chosen: (key: PresharedKey, encryption: StreamEncryption)?
        for candidate in keys {
            for encryption in StreamEncryption.allCases {
                let expected = try mac(key: candidate, role: .source, encryption: encryption, destinationNonce: destinationNonce, sourceNonce: sourceNonce, peer: peer)
                if Crypto.constantTimeEqual(proof, expected) { chosen = (candidate, encryption) }
            }
        }
        guard let (key, encryption) = chosen, sourceNonce != destinationNonce else {
            refuse(
                connection,
                "the source did not prove it holds this destination's key; give 'ferry migrate' and "
                    + "'ferry receive' the same key file (--key)"
            )
            throw .peerWithoutKey(peer: peer, role: .source)
        }
        let answer = try mac(key: key, role: .destination, encryption: encryption, destinationNonce: destinationNonce, sourceNonce: sourceNonce, peer: peer)
        try send(.auth(nonce: [], mac: answer), on: connection)
        if encryption == .aes256gcm {
            try seal(connection, keys: sealingKeys(key: key, destinationNonce: destinationNonce, sourceNonce: sourceNonce, role: .destination))
        }
        return encryption
    }

    /// The two AES-256-GCM keys of a sealed connection, as `role` uses them: HKDF-SHA-256 (RFC 5869) with the
    /// pre-shared key as input keying material, `Nd ‖ Ns` as salt, and one info string per direction
    /// (`"ferry-seal-v1 source to destination"`, `"ferry-seal-v1 destination to source"`).
    public static func sealingKeys(key: PresharedKey, destinationNonce: [UInt8], sourceNonce: [UInt8], role: Role) throws(AuthError) -> SealingKeys {
        let peer = "hkdf"
        let pseudorandomKey = try Crypto.hmacSHA256(key: destinationNonce + sourceNonce, data: key.bytes, peer: peer)
        func expand(_ info: String) throws(AuthError) -> [UInt8] {
            try Crypto.hmacSHA256(key: pseudorandomKey, data: Array(info.utf8) + [1], peer: peer)
        }
        let toDestination = try expand("ferry-seal-v1 source to destination")
        let toSource = try expand("ferry-seal-v1 destination to source")
        return role == .source ? SealingKeys(send: toDestination, receive: toSource) : SealingKeys(send: toSource, receive: toDestination)
    }

    private static func seal(_ connection: Connection, keys: SealingKeys) throws(AuthError) {
        do { try connection.enableSealing(keys) } catch { throw .transport(peer: connection.peer, error) }
    }

    // MARK: Pieces

    /// Which end of a migration connection: the source sends the workload, the destination takes it.
    public enum Role: String, Hashable, Sendable { case source, destination }

    /// The bytes each MAC covers: `"ferry-auth-v1 <role>" 0x00 Nd Ns`, or `"ferry-auth-v1 sealed <role>" …`
    /// when the source asks for a sealed stream. Both nonces have a fixed length, so no two transcripts share
    /// their bytes.
    static func transcript(role: Role, encryption: StreamEncryption = .none, destinationNonce: [UInt8], sourceNonce: [UInt8]) -> [UInt8] {
        let label = encryption == .none ? "ferry-auth-v1 \(role.rawValue)" : "ferry-auth-v1 sealed \(role.rawValue)"
        return Array(label.utf8) + [0] + destinationNonce + sourceNonce
    }

    static func mac(
        key: PresharedKey, role: Role, encryption: StreamEncryption = .none, destinationNonce: [UInt8], sourceNonce: [UInt8], peer: String
    ) throws(AuthError) -> [UInt8] {
        try Crypto.hmacSHA256(
            key: key.bytes,
            data: transcript(role: role, encryption: encryption, destinationNonce: destinationNonce, sourceNonce: sourceNonce),
            peer: peer
        )
    }

    private static func refuse(_ connection: Connection, _ reason: String) {
        // Best effort: the source may already be gone.
        try? connection.send(.helloReply(.refused(Refusal(code: .authentication, reason: reason))))
    }

    private static func send(_ frame: Frame, on connection: Connection) throws(AuthError) {
        do { try connection.send(frame) } catch { throw .transport(peer: connection.peer, error) }
    }

    private static func receive(on connection: Connection, while what: String) throws(AuthError) -> Frame {
        do { return try connection.receive(while: what) } catch { throw .transport(peer: connection.peer, error) }
    }

    private static func describe(_ frame: Frame) -> String {
        switch frame {
        case .auth(let nonce, let mac): "auth with a \(nonce.count)-byte nonce and a \(mac.count)-byte MAC"
        default: FrameCodec.name(ofType: frame.typeCode)
        }
    }
}

/// Why authentication failed, always with the peer's address so the refusal can be logged.
public enum AuthError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The peer's MAC was wrong: it does not hold our key (`role` is the peer's role).
    case peerWithoutKey(peer: String, role: PeerAuthentication.Role)
    /// The destination refused the source (its reason says why: usually a different key).
    case refused(peer: String, Refusal)
    /// The peer sent another frame where an authentication frame belonged.
    case unexpected(peer: String, expected: String, got: String)
    /// The connection failed: closed, stalled, or a malformed frame.
    case transport(peer: String, TransportError)
    /// libcrypto failed (HMAC or random bytes).
    case crypto(peer: String, String)

    /// The address of the peer (`10.0.0.2:41822`), for the log line of a refusal.
    public var peer: String {
        switch self {
        case .peerWithoutKey(let peer, _), .refused(let peer, _), .unexpected(let peer, _, _), .transport(let peer, _),
            .crypto(let peer, _):
            peer
        }
    }

    public var description: String {
        switch self {
        case .peerWithoutKey(let peer, .source):
            "refused \(peer): the source did not prove it holds the key; give 'ferry migrate' and 'ferry receive' the same --key file"
        case .peerWithoutKey(let peer, .destination):
            "the destination \(peer) did not prove it holds the key; give 'ferry receive' and 'ferry migrate' the same --key file"
        case .refused(let peer, let refusal):
            "\(peer) refused: \(refusal.reason)"
        case .unexpected(let peer, let expected, let got):
            "authentication with \(peer) failed: it sent \(got) where \(expected) was expected; are both sides this version of ferry, both with --key?"
        case .transport(_, let error):
            "during the key handshake, before any state was sent: \(error)"
        case .crypto(let peer, let reason):
            "authentication with \(peer) failed: \(reason)"
        }
    }
}

/// Whether a migration stream is sealed after the handshake.
public enum StreamEncryption: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    /// Every frame and page in AES-256-GCM records, one key per direction: confidential and tamper-evident.
    case aes256gcm = "aes-256-gcm"
    /// Plain frames and pages after the authenticated handshake, for a migration network the user trusts.
    case none

    public var description: String { rawValue }
}
