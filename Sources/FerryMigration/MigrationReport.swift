/// What `ferry migrate --report` writes: the outcome, the downtime and every round.
public struct MigrationReport: Codable, Sendable {
    public enum Outcome: String, Codable, Sendable { case completed, aborted, failed }

    /// One round of the stream: round 0 is the full copy; the last one is the stop-and-copy.
    public struct Round: Codable, Sendable {
        public var round: Int
        /// Pages sent with their bytes.
        public var pages: Int
        /// Pages sent as zero ranges (no bytes).
        public var zero_pages: Int
        public var bytes: Int
        public var seconds: Double
        /// Pages found dirty at the start of the round (what it had to send).
        public var dirty_pages: Int
        public var bandwidth_mbps: Double
        /// Pages the workload dirtied per second during the previous round.
        public var dirty_rate: Double
        public var predicted_downtime_ms: Double
        public var final: Bool
        /// Post-copy only: `switch` for the pause that moved the workload, `background` for the pages sent after it.
        public var phase: String?
        /// Pages sent as deltas against the copy sent before (`--delta-cache`), and the bytes that saved.
        public var delta_pages: Int?
        public var delta_saved_bytes: Int?
        /// Pages sent compressed (`--compress`), and the bytes that saved.
        public var compressed_pages: Int?
        public var compressed_saved_bytes: Int?

        mutating func encoded(_ tally: EncodingTally) {
            delta_pages = tally.deltaPages
            delta_saved_bytes = tally.deltaSavedBytes
            compressed_pages = tally.compressedPages
            compressed_saved_bytes = tally.compressedSavedBytes
        }
    }

    public var outcome: Outcome
    public var reason: String?
    public var tracker: String
    public var workload: String
    public var region_bytes: Int
    public var destination: String
    public var total_seconds: Double
    /// From the pause on the source to the destination's "running" acknowledgement.
    public var downtime_ms: Double?
    public var setup_seconds: Double?
    public var bytes_sent: Int
    /// `strict` (digests compared before the handoff) or `audit` (after it).
    public var verify: String
    /// `aes-256-gcm` (every frame sealed) or `none` (plain after the authenticated handshake).
    public var encryption: String?
    /// `--compress`: `auto`, `none`, `zstd` or `lz4` (absent for a post-copy move, which does not compress).
    public var compression: String?
    /// `--delta-cache`: bytes of pages kept as last sent, for deltas (0: none).
    public var delta_cache_bytes: Int?
    public var verified: Bool
    public var source_digest: String?
    public var destination_digest: String?
    public var generation: UInt64?
    public var step_at_handoff: UInt64?
    public var rounds: [Round]
    /// How non-convergence was handled, if it happened: `force`, `abort` or `throttle`.
    public var stall: String?
    /// How much `throttle` slowed the workload's steps, in percent of their pace before (0-100).
    public var throttle_percent: Double?
    /// Where the downtime went, in milliseconds.
    public var downtime_parts: DowntimeParts?
    /// `pre-copy`, `post-copy` or `hybrid`.
    public var mode: String?
    /// What post-copy did, when the migration switched to it.
    public var post_copy: PostCopy?

    /// A post-copy phase: from the switch-over until the destination held every page.
    public struct PostCopy: Codable, Sendable {
        /// The round at which the workload moved (0: before any round, pure post-copy).
        public var switch_round: Int
        /// Pages the destination lacked at the switch-over.
        public var lacking_pages: Int
        /// Pages the destination fetched on demand (as it counted them).
        public var demand_pages: Int
        /// Pages sent on the background stream.
        public var background_pages: Int
        /// Pages sent on both channels: asked for on demand after the background had claimed them (each is
        /// installed once, from whichever copy lands first).
        public var sent_twice: Int
        /// How often a broken link was reconnected during post-copy.
        public var recoveries: Int
        /// From the switch-over until the destination held every page.
        public var complete_seconds: Double
        /// Demand faults by latency: element i counts faults served in [2^i, 2^(i+1)) microseconds.
        public var latency_buckets_us: [UInt64]
        /// Median and 99th percentile of the demand-fault latency (upper bounds of their buckets), when there were faults.
        public var latency_p50_us: Double?
        public var latency_p99_us: Double?
    }

    /// The pause predicted when iterating stopped: the last pages' transfer at the measured bandwidth (the
    /// pause's fixed costs come on top, strict verification above all: `downtime_parts` shows them).
    public var predicted_downtime_ms: Double?

    /// A round in progress, a few times a second: what a live progress line shows.
    public struct Live: Codable, Sendable {
        public var round: Int
        /// Pages of the round sent so far (as data or zero ranges), of `pages_total`.
        public var pages_done: Int
        public var pages_total: Int
        public var bytes: Int
        public var seconds: Double
        public var rate_mbps: Double
        /// Seconds until the round is sent at the rate so far.
        public var eta_seconds: Double
        /// The pause the round's pages predicted when it began (0 for the full copy).
        public var predicted_downtime_ms: Double
    }

    /// The parts of the pause, in the order they happen.
    public struct DowntimeParts: Codable, Sendable {
        /// From the pause request to the safe point, files flushed.
        public var pause_ms = 0.0
        public var final_collect_ms = 0.0
        /// Sending the last pages until the destination acknowledged applying them.
        public var final_send_ms = 0.0
        /// Both digests (strict mode only).
        public var verify_ms = 0.0
        /// Renaming the ownership record into place (written and synced before the pause): the commit point.
        public var handoff_ms = 0.0
        /// From the commit frame to the destination's "running".
        public var resume_ack_ms = 0.0
        /// After the pause: the source's stop and the record's directory sync (not part of the downtime).
        public var record_sync_ms = 0.0
        public init() {}
    }
}
