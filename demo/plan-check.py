#!/usr/bin/env python3
"""Checks `ferry plan` against real migrations over loopback.

For every combination of region size, dirty rate and link rate: starts a hotset source (random fill) and a
receiver on 127.0.0.1, probes the workload (`ferry probe --json`), plans from that probe (`ferry plan --probe
FILE --link RATE --json`), migrates it at once (`ferry migrate --max-bandwidth RATE`), and prints the
forecast beside the report: total time, convergence, pause, bytes, rounds. Exit status 0 when every total is
within --bar of the measured one and every convergence forecast was right.

    demo/plan-check.py --ferry .build/release/ferry
    demo/plan-check.py --sizes 16MiB --dirty-rates 0,2000 --rates 100mbit --windows 100ms,1s,3s
"""
import argparse, itertools, json, os, random, shutil, subprocess, sys, tempfile, time


def run_case(ferry, size, dirty, rate, windows, keep):
    work = tempfile.mkdtemp(prefix="ferry-plan-check-")
    os.makedirs(work + "/shared")
    port = random.randint(20000, 40000)
    receiver = subprocess.Popen([ferry, "receive", "--listen", f"127.0.0.1:{port}", "--shared-dir", work + "/shared",
                                 "--control", work + "/b.sock", "--once"], stdout=open(work + "/b.log", "w"), stderr=subprocess.STDOUT)
    source = subprocess.Popen([ferry, "run", "--workload", "hotset", "--region-size", size, "--dirty-rate", str(dirty), "--fill", "random",
                               "--shared-dir", work + "/shared", "--control", work + "/a.sock"], stdout=open(work + "/a.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while not (os.path.exists(work + "/a.sock") and os.path.exists(work + "/b.sock")):
            if time.time() > deadline: raise RuntimeError(f"the processes did not start (see {work})")
            time.sleep(0.05)
        time.sleep(1)  # the workload at its pace
        probe = subprocess.run([ferry, "probe", "--control", work + "/a.sock", "--windows", windows, "--json"], capture_output=True, text=True)
        if probe.returncode != 0: raise RuntimeError("ferry probe: " + probe.stderr)
        open(work + "/probe.json", "w").write(probe.stdout)
        plan = subprocess.run([ferry, "plan", "--probe", work + "/probe.json", "--link", rate, "--json"], capture_output=True, text=True)
        if plan.returncode != 0: raise RuntimeError("ferry plan: " + plan.stderr)
        plan = json.loads(plan.stdout)
        migrate = subprocess.run([ferry, "migrate", "--control", work + "/a.sock", "--to", f"127.0.0.1:{port}", "--max-bandwidth", rate,
                                  "--report", work + "/report.json"], capture_output=True, text=True)
        if not os.path.exists(work + "/report.json"): raise RuntimeError("ferry migrate: " + migrate.stdout + migrate.stderr)
        report = json.load(open(work + "/report.json"))
    finally:
        for process in (source, receiver):
            if process.poll() is None: process.terminate()
        for process in (source, receiver): process.wait()
        if not keep: shutil.rmtree(work, ignore_errors=True)
    forecast = plan["forecast"]
    return {
        "size": size, "dirty_rate": dirty, "rate": rate,
        "forecast_seconds": forecast["total_seconds"], "measured_seconds": report["total_seconds"],
        "off": (forecast["total_seconds"] - report["total_seconds"]) / report["total_seconds"],
        "forecast_converges": forecast["converges"], "marginal": plan.get("marginal", False),
        "measured_converges": report.get("stall") is None and report["outcome"] == "completed", "stall": report.get("stall"),
        "forecast_pause_ms": forecast["downtime_ms"], "measured_pause_ms": report.get("downtime_ms") or 0,
        "forecast_bytes": forecast["bytes_sent"], "measured_bytes": report["bytes_sent"],
        "forecast_rounds": len(forecast["rounds"]), "measured_rounds": len(report["rounds"]),
        "recommendation": plan["recommendation"]["mode"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferry", default=".build/release/ferry", help="the ferry binary (default: %(default)s)")
    parser.add_argument("--sizes", default="16MiB,64MiB")
    parser.add_argument("--dirty-rates", default="0,2000,20000", help="hotset steps per second")
    parser.add_argument("--rates", default="100mbit,400mbit,1gbit", help="--max-bandwidth of each migration, --link of each plan")
    parser.add_argument("--windows", default="100ms,1s,10s", help="the probe's windows; the longest should cover the full copy")
    parser.add_argument("--bar", type=float, default=0.2, help="the largest relative error of the total time accepted (default: %(default)s)")
    parser.add_argument("--json", help="write every case to this file")
    parser.add_argument("--keep", action="store_true", help="keep each case's directory (logs, probe, report)")
    arguments = parser.parse_args()
    rows = []
    print(f"{'region':>7} {'steps/s':>7} {'link':>8}  {'forecast':>9} {'measured':>9} {'off':>7}  {'converges (forecast/measured)':<30} {'pause ms (forecast/measured)':>28}  rounds")
    for size, dirty, rate in itertools.product(arguments.sizes.split(","), [int(d) for d in arguments.dirty_rates.split(",")], arguments.rates.split(",")):
        row = run_case(arguments.ferry, size, dirty, rate, arguments.windows, arguments.keep)
        rows.append(row)
        converges = f"{'yes' if row['forecast_converges'] else 'no'}{' (marginal)' if row['marginal'] else ''} / {'yes' if row['measured_converges'] else 'no'}"
        print(f"{size:>7} {dirty:>7} {rate:>8}  {row['forecast_seconds']:8.3f}s {row['measured_seconds']:8.3f}s {100 * row['off']:+6.1f}%  {converges:<30} "
              f"{row['forecast_pause_ms']:13.1f} / {row['measured_pause_ms']:<12.1f}  {row['forecast_rounds']}/{row['measured_rounds']}", flush=True)
    if arguments.json: json.dump(rows, open(arguments.json, "w"), indent=1)
    worst = max(abs(row["off"]) for row in rows)
    wrong = [row for row in rows if row["forecast_converges"] != row["measured_converges"]]
    print(f"worst total-time error {100 * worst:.1f} %; convergence forecast right in {len(rows) - len(wrong)} of {len(rows)}"
          + "".join(f"; wrong: {r['size']} {r['dirty_rate']} steps/s {r['rate']} (stall {r['stall']}{', flagged marginal' if r['marginal'] else ''})" for r in wrong))
    return 0 if worst <= arguments.bar and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
