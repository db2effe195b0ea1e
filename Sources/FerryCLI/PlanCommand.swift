import Foundation
import FerryMigration
import FerrySystem

/// `ferry plan`: what a migration of a running workload over a given link would do, before doing it.
struct PlanCommand: Command {
    static let path = ["plan"]
    static let summary = "Forecast a migration over a link from a probe: rounds, convergence, pause, bytes and time."
    static let discussion = """
        Probes the workload (as 'ferry probe' does, or reads a probe saved with 'ferry probe --json') and forecasts a
        pre-copy migration with the source document's arithmetic, round by round: the full copy is the region's data
        at the link's rate; each round sends what was dirtied during the previous one (the probe's unique pages for a
        window of that round's length); it stops where 'ferry migrate' would (the same rule: another round while it
        makes the pause meaningfully shorter; a --downtime-target is a cap and --on-stall decides above it). The
        pause is the last pages, strict verification (one digest pass on each side) and the handoff on the shared
        mount. Framing (a frame header per run of pages, sealed records) is counted.
        Then it recommends pre-copy (it converges), pre-copy with --on-stall throttle (it converges if the workload
        is slowed by at most --max-throttle), or post-copy (--mode hybrid or post-copy), whose time it does not forecast.
        """
    static let options = [
        OptionSpec("control", "SOCKET", "Control socket of the process running the workload (probed now)."),
        OptionSpec("probe", "FILE", "Plan from a probe saved with 'ferry probe --json' instead of probing now."),
        OptionSpec("windows", "LIST", "With --control: the probe's windows.", default: "100ms,1s,10s"),
        OptionSpec("tracker", "NAME", "With --control: the probe's tracker.", default: "auto"),
        OptionSpec("link", "RATE", "The migration stream's rate, e.g. 100mbit, 1gbit or 200MB/s ('ferry migrate --max-bandwidth', or the link).", default: "required"),
        OptionSpec("link-mtu", "BYTES", "The rate counts whole Ethernet frames of this MTU (a NIC or a tc shaper): the stream gets (MTU-52)/(MTU+14) of it. Leave out for a --max-bandwidth cap."),
        OptionSpec("mode", "MODE", "pre-copy (the plan does not forecast post-copy or hybrid yet).", default: "pre-copy"),
        OptionSpec("downtime-target", "DURATION", "As for 'ferry migrate': a cap on the pause, over which --on-stall decides."),
        OptionSpec("on-stall", "POLICY", "As for 'ferry migrate': force, abort or throttle.", default: "force"),
        OptionSpec("verify", "MODE", "As for 'ferry migrate': strict or audit.", default: "strict"),
        OptionSpec("encryption", "MODE", "As for 'ferry migrate': aes-256-gcm or none.", default: "aes-256-gcm"),
        OptionSpec("compress", "CODEC", "As for 'ferry migrate': auto, none, zstd or lz4 (the probe measured how the data compresses).", default: "auto"),
        OptionSpec("max-rounds", "N", "As for 'ferry migrate'.", default: "30"),
        OptionSpec("max-throttle", "PERCENT", "The most the workload may be slowed for throttling to be recommended.", default: "50"),
        OptionSpec("json", nil, "Print the plan as JSON."),
    ]

    /// What `--json` prints.
    struct Output: Codable {
        var workload: String?
        var region: MigrationPlan.Region
        var link: MigrationPlan.Link
        var settings: MigrationPlan.Settings
        var curve: DirtyCurve
        var working_set_pages: Int
        /// With the settings given.
        var forecast: MigrationPlan.Forecast
        /// With `--on-stall throttle`, when pre-copy does not converge by itself.
        var throttle_forecast: MigrationPlan.Forecast?
        var recommendation: MigrationPlan.Recommendation
        /// Converges, but a dip of the link by less than 40 % in one round could stop it early, as a stall.
        var marginal: Bool
    }

    static func run(_ arguments: ParsedArguments) async throws -> ExitStatus {
        let mode = arguments.string("mode", default: "pre-copy")
        guard mode == "pre-copy" else {
            if mode == "post-copy" || mode == "hybrid" { throw UsageError("--mode \(mode): the plan forecasts pre-copy only, not post-copy's time yet (the recommendation says when post-copy is needed)") }
            throw UsageError("--mode \(mode): expected pre-copy")
        }
        guard let rate = try arguments.rate("link") else { throw UsageError("--link is required (the migration stream's rate, like 100mbit)") }
        let mtu = arguments.string("link-mtu") == nil ? nil : try arguments.integer("link-mtu", default: 1500, range: 576...65536)
        let onStallText = arguments.string("on-stall", default: "force")
        guard let onStall = StallPolicy(rawValue: onStallText) else { throw UsageError("--on-stall \(onStallText): expected force, abort or throttle") }
        let verifyText = arguments.string("verify", default: "strict")
        guard let verification = VerificationMode(rawValue: verifyText) else { throw UsageError("--verify \(verifyText): expected strict or audit") }
        let encryption = arguments.string("encryption", default: "aes-256-gcm")
        guard ["aes-256-gcm", "none"].contains(encryption) else { throw UsageError("--encryption \(encryption): expected aes-256-gcm or none") }
        let compressText = arguments.string("compress", default: "auto")
        guard let compression = CompressionChoice(rawValue: compressText) else { throw UsageError("--compress \(compressText): expected auto, none, zstd or lz4") }
        let target = arguments.string("downtime-target") == nil ? nil : try arguments.seconds("downtime-target", default: 0)
        let maximumRounds = try arguments.integer("max-rounds", default: 30, range: 1...10_000)
        let maximumThrottle = try arguments.count("max-throttle", default: 50)
        guard maximumThrottle <= 100 else { throw UsageError("--max-throttle \(maximumThrottle): expected a percentage from 0 to 100") }

        let probe: ProbeOutput
        switch (arguments.string("control"), arguments.string("probe")) {
        case (let control?, nil):
            let windows = try ProbeRequest.windows(arguments)
            let tracker = try ProbeRequest.tracker(arguments)
            if !arguments.has("json") { printError("ferry plan: probing the workload for \(ProbeRequest.duration(windows.max() ?? 0))") }
            probe = ProbeOutput(try ProbeRequest.run(control: control, windows: windows, tracker: tracker))
        case (nil, let file?):
            guard let data = FileManager.default.contents(atPath: file) else { throw CommandFailure(status: .failure, message: "cannot read the probe \(file)") }
            do {
                probe = ProbeOutput(try JSONDecoder().decode(ProbeOutput.self, from: data).probe)
            } catch {
                throw CommandFailure(status: .failure, message: "\(file) is not a probe written by 'ferry probe --json': \(error)")
            }
        default:
            throw UsageError("give either --control SOCKET (probe now) or --probe FILE (a saved 'ferry probe --json')")
        }

        let region = MigrationPlan.Region(probe: probe.probe)
        let link = MigrationPlan.Link(bytes_per_second: rate, mtu: mtu, sealed: encryption != "none")
        let costs = MigrationPlan.Costs.measured(by: probe.probe)
        let curve = probe.curve
        let settings = MigrationPlan.Settings(
            downtimeTarget: target, onStall: onStall, verification: verification, maximumRounds: maximumRounds, compression: compression)
        func forecast(_ policy: StallPolicy) -> MigrationPlan.Forecast {
            var changed = settings
            changed.on_stall = policy.rawValue
            return MigrationPlan.forecast(region: region, curve: curve, link: link, settings: changed, costs: costs)
        }
        let asked = forecast(onStall)
        let precopy = onStall == .force ? asked : forecast(.force)
        let throttled = onStall == .throttle ? asked : forecast(.throttle)
        let recommendation = MigrationPlan.recommend(precopy: precopy, throttled: throttled, maximumThrottlePercent: maximumThrottle)
        let output = Output(
            workload: probe.probe.workload, region: region, link: link, settings: settings, 
            curve: curve, working_set_pages: probe.working_set_pages, forecast: asked,
            throttle_forecast: precopy.converges ? nil : throttled, recommendation: recommendation, marginal: asked.isMarginal())
        if arguments.has("json") {
            printLine(try JSONLines.encode(output))
        } else {
            for line in table(output, probe: probe) { printLine(line) }
        }
        return .success
    }

    /// `100 Mbit/s`, `1 Gbit/s`, `2.5 Gbit/s`.
    static func bitRate(_ bytesPerSecond: Double) -> String {
        let bits = bytesPerSecond * 8
        if bits >= 1e9 { return "\((bits / 1e9).formatted(decimals: bits / 1e9 == (bits / 1e9).rounded() ? 0 : 2)) Gbit/s" }
        return "\((bits / 1e6).formatted(decimals: bits / 1e6 == (bits / 1e6).rounded() ? 0 : 1)) Mbit/s"
    }

    static func table(_ output: Output, probe: ProbeOutput) -> [String] {
        let plan = output.forecast
        let region = output.region
        let target = output.settings.downtime_target.map { "downtime target \(ProbeRequest.duration($0))" } ?? "no downtime target"
        var lines = [
            "\(output.workload ?? "workload"), \(ByteCount(region.bytes)) region (\(region.data_pages) pages hold data), link \(bitRate(output.link.bytes_per_second))"
                + (output.link.mtu.map { " in \($0)-byte frames" } ?? "") + String(format: " (%.1f MB/s of stream)", output.link.streamBytesPerSecond / 1e6)
                + ", \(output.settings.verify) verification, \(target), --on-stall \(output.settings.on_stall)",
            "dirty pages (probe): " + probe.windows.map { "\(ProbeRequest.duration($0.seconds)) \($0.pages_per_second.formatted(decimals: 0))/s" }.joined(separator: ", ")
                + "; working set \(probe.working_set_pages) pages (\(ByteCount(probe.working_set_bytes)))",
            "compression (--compress \(output.settings.compress)): " + {
                let share = MigrationPlan.compressedShare(region, bytesPerSecond: output.link.streamBytesPerSecond, settings: output.settings)
                return share < 1 ? String(format: "a data page costs %.0f %% of its bytes on this link", share * 100) : "pages go as they are on this link"
            }(),
            "round".padding(to: 15) + "dirtied in (s)".padding(to: 16) + "pages".padding(to: 10) + "bytes".padding(to: 12) + "seconds".padding(to: 10) + "predicted pause",
        ]
        for round in plan.rounds {
            let name = round.round == 0 ? "0 (full copy)" : round.final ? "\(round.round) (final)" : "\(round.round)"
            lines.append(
                name.padding(to: 15) + (round.round == 0 ? "-" : round.window_seconds.formatted(decimals: 3)).padding(to: 16)
                    + "\(Int(round.pages.rounded()))".padding(to: 10) + "\(Int(round.bytes.rounded()))".padding(to: 12)
                    + round.seconds.formatted(decimals: 3).padding(to: 10)
                    + (round.round == 0 ? "-" : "\(round.predicted_pause_ms.formatted(decimals: 1)) ms")
                    + (round.pace_fraction.map { String(format: "  (workload at %.0f %% of its pace)", $0 * 100) } ?? ""))
        }
        let dirtyRounds = plan.rounds.filter { $0.round > 0 && !$0.final }.count
        if plan.outcome == "post-copy" {
            lines.append("converges: no; --on-stall post-copy switches to post-copy after \(dirtyRounds) dirty rounds (what follows is not forecast)")
        } else if plan.outcome == "aborted" {
            lines.append("converges: no; --on-stall abort gives up after \(dirtyRounds) dirty rounds (\(plan.reason ?? "")); the workload stays on the source")
        } else if plan.converges {
            var line = "converges: yes, after \(dirtyRounds) dirty rounds"
            if plan.isMarginal(), let closest = plan.closest_ratio {
                line += String(
                    format: " (marginal: while a round is sent the workload dirties %.2f of its pages again, and the engine stops iterating at 0.75; a dip of the link by %.0f %% in one of the %d rounds still over %@ would stop it early, as a stall)",
                    closest, 100 * (1 - closest / 0.75), plan.rounds_over_cap, ProbeRequest.duration(output.settings.downtime_target ?? MigrationOptions.defaultStallCap))
            }
            lines.append(line)
        } else {
            let how = plan.stall == "throttle"
                ? "slowing the workload by \(MigrationPlan.percent(plan.throttle_percent ?? 0)) (--on-stall throttle)"
                : "stopping anyway (--on-stall force)"
            lines.append("converges: no; handled by \(how) after \(dirtyRounds) dirty rounds")
        }
        if plan.outcome == "completed" {
            lines.append(String(
                format: "pause: %.1f ms (last pages %.1f ms, verification %.1f ms, safe point and handoff %.1f ms)",
                plan.downtime_ms, plan.final_send_ms, plan.verify_ms, plan.fixed_pause_ms))
        }
        let data = Double(max(region.data_pages, 1) * region.page_size)
        if plan.outcome != "post-copy" { lines.append(String(
            format: "total: %@ sent (%.2f × the region's data), %.2f s (start %.3f s, full copy %.3f s)",
            ByteCount(Int(plan.bytes_sent.rounded())).description, plan.bytes_sent / data, plan.total_seconds, plan.costs.start, plan.full_copy_seconds)) }
        if let throttled = output.throttle_forecast, output.settings.on_stall != "throttle" {
            lines.append(throttled.outcome == "completed"
                ? String(format: "with --on-stall throttle: the workload slowed by %@, a pause of %.1f ms, total %.2f s", MigrationPlan.percent(throttled.throttle_percent ?? 0), throttled.downtime_ms, throttled.total_seconds)
                : "with --on-stall throttle: \(throttled.reason ?? "it does not complete")")
        }
        lines.append("recommendation: \(output.recommendation.mode): \(output.recommendation.reason)")
        return lines
    }
}
