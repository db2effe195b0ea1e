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
    public var verified: Bool
    public var source_digest: String?
    public var destination_digest: String?
    public var generation: UInt64?
    public var step_at_handoff: UInt64?
    public var rounds: [Round]
}
