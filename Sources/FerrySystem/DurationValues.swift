extension Duration {
    /// The duration in seconds, as a Double (for rates and reports).
    public var secondsValue: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// The duration in microseconds, as a Double.
    public var microsecondsValue: Double { secondsValue * 1e6 }

    /// The duration in nanoseconds, as a Double.
    public var nanosecondsValue: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) * 1e9 + Double(attoseconds) / 1e9
    }
}
