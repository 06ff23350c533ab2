"""The benchmark driver that `benches/run.sh` (and so `make bench`) runs.

For each photo set (1600x1200 and 4000x3000 by default):

- throughput: the Python reference (reference_pipeline.py) and
  `tagd scan`, each on a fresh SQLite catalogue, alternating which goes
  first in each round so both see the same background load; wall time,
  images/s, CPU time and peak RSS (from wait4) of each process;
- drop-to-row latency: `tagd run --watch INBOX` on a fresh catalogue;
  photos are renamed into the inbox from a staging folder on the same file
  system at a steady rate, each touched just before (a freshly written
  upload, so the settle window applies); latency is the catalogue's
  `tagged_at` minus the drop time; the daemon's peak RSS is its VmHWM;
- idle CPU: once every drop is tagged, the daemon's CPU time (utime +
  stime of all threads) and context switches over an idle period.

Every figure is printed, and the tables are also written to
OUT/results.md. Nothing here passes or fails on speed; the run fails only
if a pipeline does not tag every photo.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------- system load


def system_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot, all cores."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of a process."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def context_switches(pid: int) -> dict[str, int]:
    """Context switches so far, per thread of a process."""
    counts = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as status:
                counts[task] = sum(
                    int(line.split()[1])
                    for line in status
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
                )
        except OSError:
            pass  # the thread ended
    return counts


def switches_between(before: dict[str, int], after: dict[str, int]) -> int:
    """Switches in between, for the threads alive at the end (threads that
    ended in between are not counted)."""
    return sum(count - before.get(task, 0) for task, count in after.items())


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def busiest_processes(seconds: float = 2.0, top: int = 3) -> list[tuple[str, float]]:
    """The processes using the most CPU over a short sample, in cores."""

    def sample() -> dict[int, tuple[str, float]]:
        seen = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    text = stat.read()
                name = text[text.index("(") + 1 : text.rindex(")")]
                fields = text.rsplit(")", 1)[1].split()
                seen[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
            except (OSError, ValueError, IndexError):
                pass
        return seen

    before = sample()
    time.sleep(seconds)
    after = sample()
    usage = []
    for pid, (name, cpu) in after.items():
        if pid in before and pid != os.getpid():
            used = (cpu - before[pid][1]) / seconds
            if used >= 0.05:
                usage.append((f"{name} (pid {pid})", used))
    return sorted(usage, key=lambda item: -item[1])[:top]


# ------------------------------------------------------------------ running


def measured_run(command: list[str], env: dict[str, str], log_path: str) -> dict:
    """Runs a command to completion; wall time, CPU time, peak RSS, and the
    CPU that everything else on the machine used meanwhile."""
    with open(log_path, "w") as log:
        busy_before = system_busy_seconds()
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        busy = system_busy_seconds() - busy_before
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "rc": process.returncode,
        "stdout": stdout.strip(),
        "wall": wall,
        "cpu": cpu,
        "rss_mib": usage.ru_maxrss / 1024,
        "other_cores": max(0.0, busy - cpu) / wall,
    }


def fresh_sqlite(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def tagd_env(settle_ms: int | None = None) -> dict[str, str]:
    """The environment without any TAGD__ or RUST_LOG settings of the
    caller's, so only the benchmark's own settings apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGD__") and k != "RUST_LOG"}
    if settle_ms is not None:
        env["TAGD__WATCH__SETTLE_MS"] = str(settle_ms)
    return env


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.config = os.path.join(self.out, "tagd-bench.toml")
        with open(self.config, "w") as config:
            # An explicit (default) config keeps /etc/tagd/tagd.toml out of the run.
            config.write(
                "# Built-in defaults; the benchmark sets watch.settle_ms by environment.\n"
            )
            config.write("[pipeline]\nworkers = 0\n")
        self.lines: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)

    def tagd_base(self, database: str) -> list[str]:
        a = self.args
        return [
            a.tagd,
            "--config", self.config,
            "--model", a.model,
            "--database", "sqlite://" + os.path.abspath(database),
            "--onnxruntime", a.onnxruntime,
            "--log-format", "text",
        ]  # fmt: skip

    # ------------------------------------------------------- throughput

    def throughput(self, name: str, photos: str, count: int) -> list[dict]:
        a = self.args
        ref_db = os.path.join(self.out, f"reference-{name}.db")
        tagd_db = os.path.join(self.out, f"tagd-scan-{name}.db")
        commands = {
            "reference": [
                sys.executable, os.path.join(HERE, "reference_pipeline.py"),
                "--model", a.model, "--database", ref_db, "--threads", str(a.ref_threads),
                photos,
            ],
            "tagd scan": self.tagd_base(tagd_db) + ["scan", "--no-progress", photos],
        }  # fmt: skip
        databases = {"reference": ref_db, "tagd scan": tagd_db}
        runs: dict[str, list[dict]] = {"reference": [], "tagd scan": []}
        for round_number in range(a.rounds):
            order = ["reference", "tagd scan"]
            if round_number % 2 == 1:
                order.reverse()
            for pipeline in order:
                fresh_sqlite(databases[pipeline])
                log = os.path.join(self.out, f"{pipeline.replace(' ', '-')}-{name}.log")
                env = tagd_env() if pipeline == "tagd scan" else os.environ.copy()
                result = measured_run(commands[pipeline], env, log)
                tagged = self.tagged_count(pipeline, result, databases[pipeline])
                if result["rc"] != 0 or tagged != count:
                    self.say(
                        f"  {pipeline} FAILED: exit {result['rc']}, "
                        f"{tagged}/{count} tagged; see {log}"
                    )
                    self.say("  " + result["stdout"])
                    raise SystemExit(1)
                runs[pipeline].append(result)
                self.say(
                    f"  round {round_number + 1} {pipeline:<10} {result['wall']:6.2f} s wall "
                    f"{count / result['wall']:7.1f} images/s  cpu {result['cpu']:6.2f} s  "
                    f"peak RSS {result['rss_mib']:6.1f} MiB  "
                    f"other load {result['other_cores']:.2f} cores"
                )
                self.say(f"    {result['stdout'].splitlines()[-1] if result['stdout'] else ''}")

        self.say(f"  {self.agreement(tagd_db, ref_db, count)}")
        rows = []
        for pipeline, results in runs.items():
            wall = statistics.median(r["wall"] for r in results)
            # Each round's pair ran back to back under the same load: the
            # median of the per-round ratios is steadier than a ratio of medians.
            speedup = statistics.median(
                ref["wall"] / mine["wall"]
                for ref, mine in zip(runs["reference"], results, strict=True)
            )
            rows.append(
                {
                    "set": name,
                    "pipeline": pipeline,
                    "images": count,
                    "wall": wall,
                    "rate": count / wall,
                    "speedup": speedup,
                    "rss": max(r["rss_mib"] for r in results),
                    "cpu": statistics.median(r["cpu"] for r in results),
                    "other": statistics.median(r["other_cores"] for r in results),
                    "walls": [r["wall"] for r in results],
                }
            )
        return rows

    def tagged_count(self, pipeline: str, result: dict, database: str) -> int:
        if pipeline == "tagd scan":
            match = re.search(r"(\d+) tagged", result["stdout"])
            return int(match.group(1)) if match else -1
        try:
            with sqlite3.connect(database) as db:
                return db.execute(
                    "SELECT count(*) FROM predictions WHERE label IS NOT NULL"
                ).fetchone()[0]
        except sqlite3.Error:
            return -1

    def agreement(self, tagd_db: str, ref_db: str, count: int) -> str:
        """Do tagd and the reference see the same thing? Same label, and how
        far apart the confidences are."""
        with sqlite3.connect(tagd_db) as db:
            db.execute("ATTACH DATABASE ? AS ref", (ref_db,))
            same, total, worst = db.execute(
                """SELECT sum(p.label = r.label), count(*), max(abs(p.confidence - r.confidence))
                   FROM images AS i
                   JOIN predictions AS p ON p.id = i.prediction_id
                   JOIN ref.predictions AS r ON r.path = i.path"""
            ).fetchone()
        return (
            f"same label from tagd and the reference for {same} of {total} photos "
            f"(of {count}); largest confidence difference {worst or 0:.3f}"
        )

    # ---------------------------------------------------------- latency

    def latency(self, name: str, photos: str, count: int, rate: float) -> dict:
        a = self.args
        root = os.path.join(self.out, f"latency-{name}")
        shutil.rmtree(root, ignore_errors=True)
        inbox, staging = os.path.join(root, "inbox"), os.path.join(root, "staging")
        os.makedirs(inbox)
        os.makedirs(staging)
        names = sorted(n for n in os.listdir(photos) if n.endswith(".jpg"))[:count]
        for file_name in names:
            shutil.copyfile(os.path.join(photos, file_name), os.path.join(staging, file_name))
        database = os.path.join(root, "catalogue.db")
        log_path = os.path.join(self.out, f"tagd-run-{name}.log")

        command = self.tagd_base(database) + ["run", "--watch", inbox]
        with open(log_path, "w") as log:
            daemon = subprocess.Popen(
                command, env=tagd_env(a.settle_ms), stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self.wait_ready(daemon, log_path)
            drops = self.drop(names, staging, os.path.realpath(inbox), rate)
            rows = self.wait_tagged(database, drops, daemon)
            peak_rss = status_kib(daemon.pid, "VmHWM") / 1024
            # Let the last commit, WAL checkpoint and wake-ups finish first.
            time.sleep(3)
            cpu_before, switches_before = (
                process_cpu_seconds(daemon.pid),
                context_switches(daemon.pid),
            )
            time.sleep(a.idle_seconds)
            cpu_after, switches_after = (
                process_cpu_seconds(daemon.pid),
                context_switches(daemon.pid),
            )
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        if daemon.returncode != 0:
            self.say(f"  tagd run exited {daemon.returncode} after SIGTERM; see {log_path}")

        latencies = sorted((rows[p]["tagged"] - drops[p]) * 1000 for p in drops)
        seen = sorted((rows[p]["discovered"] - drops[p]) * 1000 for p in drops)
        idle_cpu = cpu_after - cpu_before
        result = {
            "set": name,
            "images": count,
            "rate": rate,
            "p50": percentile(latencies, 0.50),
            "p95": percentile(latencies, 0.95),
            "max": latencies[-1],
            "seen_p50": percentile(seen, 0.50),
            "rss": peak_rss,
            "idle_cpu": idle_cpu,
            "idle_pct": 100 * idle_cpu / a.idle_seconds,
            "wakeups": switches_between(switches_before, switches_after) / a.idle_seconds,
        }
        self.say(
            f"  {count} drops at {rate:g}/s, settle {a.settle_ms} ms: "
            f"latency p50 {result['p50']:.0f} ms, "
            f"p95 {result['p95']:.0f} ms, max {result['max']:.0f} ms "
            f"(discovered: p50 {result['seen_p50']:.0f} ms after the drop); "
            f"daemon peak RSS {peak_rss:.1f} MiB"
        )
        self.say(
            f"  idle for {a.idle_seconds:g} s: {idle_cpu * 1000:.0f} ms of CPU "
            f"({result['idle_pct']:.2f}% of one core; "
            f"the kernel counts in {1000 // CLOCK_TICKS} ms ticks), "
            f"{result['wakeups']:.1f} context switches/s"
        )
        return result

    def wait_ready(self, daemon: subprocess.Popen, log_path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                raise SystemExit(f"tagd run exited {daemon.returncode} at start-up; see {log_path}")
            with open(log_path) as log:
                if "start-up scan done" in log.read():
                    return
            time.sleep(0.05)
        raise SystemExit(f"tagd run was not ready after 60 s; see {log_path}")

    def drop(self, names: list[str], staging: str, inbox: str, rate: float) -> dict[str, float]:
        drops = {}
        started = time.monotonic()
        for index, file_name in enumerate(names):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            source = os.path.join(staging, file_name)
            os.utime(source)  # freshly written: the settle window applies
            dropped = time.time()
            os.rename(source, os.path.join(inbox, file_name))
            drops[os.path.join(inbox, file_name)] = dropped
        return drops

    def wait_tagged(self, database: str, drops: dict, daemon: subprocess.Popen) -> dict:
        deadline = time.monotonic() + 120 + len(drops)
        query = f"""SELECT path, status, discovered_at, tagged_at FROM images
                    WHERE path IN ({",".join("?" * len(drops))})"""
        while True:
            with sqlite3.connect(database, timeout=10) as db:
                found = db.execute(query, list(drops)).fetchall()
            done = [row for row in found if row[1] != "pending"]
            if len(done) == len(drops):
                break
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"only {len(done)} of {len(drops)} drops were tagged")
            time.sleep(0.2)
        rows = {}
        for path, status, discovered_at, tagged_at in found:
            if status != "tagged":
                raise SystemExit(f"{path} ended {status}, not tagged")
            rows[path] = {"discovered": parse_time(discovered_at), "tagged": parse_time(tagged_at)}
        return rows


def parse_time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(share * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def tables(throughput: list[dict], latency: list[dict], args) -> str:
    lines = [
        "| set | pipeline | images | wall s | images/s | speed-up vs reference | peak RSS MiB "
        "| CPU s | CPU ms/image | other load, cores |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in throughput:
        lines.append(
            f"| {row['set']} | {row['pipeline']} | {row['images']} | {row['wall']:.2f} | "
            f"{row['rate']:.1f} | {row['speedup']:.2f}x | {row['rss']:.1f} | {row['cpu']:.2f} | "
            f"{1000 * row['cpu'] / row['images']:.2f} | {row['other']:.2f} |"
        )
    lines += [
        "",
        "| set | drops | rate /s | settle ms | latency p50 ms | p95 ms | max ms "
        f"| daemon peak RSS MiB | idle CPU ms over {args.idle_seconds:g} s "
        "| idle % of one core | idle context switches/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in latency:
        lines.append(
            f"| {row['set']} | {row['images']} | {row['rate']:g} | {args.settle_ms} "
            f"| {row['p50']:.0f} | {row['p95']:.0f} | {row['max']:.0f} | {row['rss']:.1f} "
            f"| {1000 * row['idle_cpu']:.0f} | {row['idle_pct']:.2f} | {row['wakeups']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--model", default="models/fashion-mnist")
    parser.add_argument("--tagd", default="target/release/tagd")
    parser.add_argument("--onnxruntime", default=".ort/libonnxruntime.so.1.31.1")
    parser.add_argument("--small", type=int, default=300, help="photos at 1600x1200")
    parser.add_argument("--large", type=int, default=60, help="photos at 4000x3000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ref-threads", type=int, default=1)
    parser.add_argument("--latency-small", type=int, default=100)
    parser.add_argument("--latency-large", type=int, default=30)
    parser.add_argument("--rate-small", type=float, default=10.0)
    parser.add_argument("--rate-large", type=float, default=3.0)
    parser.add_argument("--settle-ms", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    args = parser.parse_args()
    for path in (args.tagd, args.onnxruntime, os.path.join(args.model, "model.toml")):
        if not os.path.exists(path):
            raise SystemExit(f"bench: {path} does not exist")
    args.model = os.path.abspath(args.model)
    args.tagd = os.path.abspath(args.tagd)
    args.onnxruntime = os.path.abspath(args.onnxruntime)
    os.makedirs(args.out, exist_ok=True)
    bench = Bench(args)

    started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    revision = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    with open(os.path.join(args.model, "model.toml"), "rb") as manifest_file:
        manifest = tomllib.load(manifest_file)
    model = (
        f"{manifest.get('name')} {manifest.get('version')} "
        f"(sha256 {str(manifest.get('sha256'))[:12]}, {manifest.get('preprocessing')})"
    )
    header = [
        f"- date: {started_at}; tagd {revision or '(unknown revision)'}; model {model}",
        f"- CPUs: {os.cpu_count()}; load average at start: {load_average()}",
    ]
    busiest = busiest_processes()
    if busiest:
        header.append(
            "- busiest processes at start: "
            + ", ".join(f"{name} {cores:.2f} cores" for name, cores in busiest)
        )
    for line in header:
        bench.say(line)

    sets = [
        ("1600 px", args.small, 1600, 1200, args.latency_small, args.rate_small),
        ("12 MP", args.large, 4000, 3000, args.latency_large, args.rate_large),
    ]
    throughput_rows, latency_rows = [], []
    for name, count, width, height, latency_count, rate in sets:
        if count <= 0:
            continue
        photos = os.path.join(os.path.abspath(args.out), f"photos-{width}x{height}")
        subprocess.run(
            [sys.executable, os.path.join(HERE, "make_photos.py"), photos,
             "--count", str(count), "--width", str(width), "--height", str(height)],
            check=True,
        )  # fmt: skip
        bench.say(f"\n## {name}: throughput, {args.rounds} rounds")
        throughput_rows += bench.throughput(name, photos, count)
        if latency_count > 0:
            bench.say(f"## {name}: drop-to-row latency and idle CPU")
            latency_rows.append(bench.latency(name, photos, min(latency_count, count), rate))

    header.append(f"- load average at end: {load_average()}")
    notes = [
        "",
        "Throughput: wall time of the whole process, start-up included, median of the rounds; "
        "speed-up: median over the rounds of reference wall / tagd wall, the two run back to back; "
        "peak RSS: the largest of the rounds; CPU: user + system time of the process; "
        "other load: the CPU that the rest of the machine used meanwhile, in cores.",
        f"Reference: one Python process, onnxruntime with {args.ref_threads} intra-op thread(s), "
        "batches of 64. tagd: default settings (workers = one per CPU, batch 32).",
        "Latency: drops renamed into the inbox at a steady rate, each touched first; "
        f"settle window {args.settle_ms} ms (TAGD__WATCH__SETTLE_MS), so latency includes it.",
    ]
    table = tables(throughput_rows, latency_rows, args)
    report = "\n".join(["# tagd benchmark", ""] + header + ["", table] + notes) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as results:
        results.write(report)
    bench.say("\n" + "\n".join(header) + "\n\n" + table + "\n" + "\n".join(notes))
    bench.say(f"\n(also written to {os.path.join(args.out, 'results.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
