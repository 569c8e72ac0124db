#!/usr/bin/env python3
"""Compares resnetc with ONNX Runtime (and OpenVINO when installed) on the same
torchvision model with the same weights, in one run, on this machine.

For every model: `resnetc seed` writes seeded weights (torchvision names), which are
loaded into the torchvision model and exported to ONNX once per batch size. For every
(model, batch, threads) configuration the engines are measured in interleaved rounds
(ORT, OpenVINO, resnetc backends, then the next round in reverse order), so that drift
of a shared, noisy machine hits all engines alike. A configuration's figures are the
median of its rounds' medians; the ratio column divides an engine's figure by ONNX
Runtime's from the same configuration of the same run.

Usually started through bench/run.sh, which builds resnetc and provides the Python
environment. Outputs: a Markdown table on stdout and in OUT/results.md, and
OUT/results.json with every round's figures.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers


def csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def csv_ints(text: str) -> list[int]:
    values = [int(item) for item in csv_list(text)]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def git_describe() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class CpuMeter:
    """What else used the machine while a measurement ran, as percentages of the whole
    machine's time (/proc/stat): CPU time of *other* processes (busy time minus this
    process's and its waited-for children's), which shows a background job competing for
    the cores; and steal time, which a hypervisor reports when it ran another guest on
    one of this VM's CPUs (a 2-thread run then waits on the CPU that was taken away)."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.ncpu = os.cpu_count() or 1

    def _stat_seconds(self) -> tuple[float, float] | None:
        """(busy, steal) seconds of the whole machine since boot."""
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        # user nice system idle iowait irq softirq steal ...
        values = [int(v) for v in fields[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = values
        return (user + nice + system + irq + softirq) / self.tick, steal / self.tick

    @staticmethod
    def _own_seconds() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def start(self) -> tuple:
        return (time.perf_counter(), self._stat_seconds(), self._own_seconds())

    def stop(self, mark: tuple) -> tuple[float | None, float | None]:
        """(other CPU %, steal %) since `mark`."""
        wall0, stat0, own0 = mark
        wall = time.perf_counter() - wall0
        stat1 = self._stat_seconds()
        if stat0 is None or stat1 is None or wall <= 0:
            return None, None
        whole = wall * self.ncpu
        other = (stat1[0] - stat0[0]) - (self._own_seconds() - own0)
        return max(0.0, 100.0 * other / whole), max(0.0, 100.0 * (stat1[1] - stat0[1]) / whole)


@dataclass
class Stats:
    median_ms: float
    min_ms: float
    max_ms: float
    runs: int


def time_runs(fn, warmup: int, min_runs: int, min_seconds: float, max_runs: int = 100_000) -> Stats:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return Stats(statistics.median(times), min(times), max(times), len(times))


def rel_err(y: np.ndarray, y_ref: np.ndarray) -> float:
    y = np.asarray(y, dtype=np.float64)
    y_ref = np.asarray(y_ref, dtype=np.float64)
    if y.shape != y_ref.shape:
        return float("inf")
    return float(np.max(np.abs(y - y_ref)) / max(1.0, float(np.max(np.abs(y_ref)))))


# ----------------------------------------------------------------------------- engines


@dataclass
class Engine:
    """One engine in one configuration. `measure` returns (Stats, extra dict) or raises."""

    name: str
    measure: object
    compile_ms: float | None = None
    note: str | None = None
    rounds: list = field(default_factory=list)
    failed: str | None = None


# A peer's session lives only while one of its rounds is measured. Left alive, its idle
# worker threads share the cores with the engines measured after it: on an AMD EPYC VM an
# OpenVINO model that had run for a second slowed the next two-thread resnetc runs by a
# quarter (ResNet-50: 38 against 29 ms) until it was deleted, although it used no CPU time.
def onnxruntime_engine(ort, onnx_path: Path, threads: int, x: np.ndarray, args) -> Engine:
    engine = Engine(f"onnxruntime {ort.__version__}", None)

    def measure():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
        compile_ms = (time.perf_counter() - t0) * 1e3
        engine.compile_ms = compile_ms if engine.compile_ms is None else min(engine.compile_ms, compile_ms)
        feed = {sess.get_inputs()[0].name: x}
        try:
            stats = time_runs(lambda: sess.run(None, feed), args.warmup, args.runs, args.min_seconds)
        finally:
            del sess
            gc.collect()
        return stats, {"compile_ms": compile_ms}

    engine.measure = measure
    return engine


def openvino_engine(ov, onnx_path: Path, threads: int, x: np.ndarray, args) -> Engine:
    engine = Engine(f"openvino {ov.__version__.split('-')[0]}", None)
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        # f32 like the other engines (matters only on CPUs with bf16/fp16 support).
        "INFERENCE_PRECISION_HINT": "f32",
    }

    def measure():
        core = ov.Core()
        t0 = time.perf_counter()
        model = core.read_model(str(onnx_path))
        compiled = core.compile_model(model, "CPU", config)
        compile_ms = (time.perf_counter() - t0) * 1e3
        engine.compile_ms = compile_ms if engine.compile_ms is None else min(engine.compile_ms, compile_ms)
        effective = {}
        for key in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING"):
            try:
                value = compiled.get_property(key)
                effective[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
            except Exception:  # property names differ between versions
                pass
        engine.note = ", ".join(f"{k}={v}" for k, v in effective.items()) or None
        request = compiled.create_infer_request()
        try:
            stats = time_runs(lambda: request.infer({0: x}, share_inputs=True), args.warmup, args.runs,
                              args.min_seconds)
        finally:
            del request, compiled, model, core
            gc.collect()
        return stats, {"compile_ms": compile_ms}

    engine.measure = measure
    return engine


def run_measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float | None]:
    """Runs `cmd`; returns the completed process and its peak RSS in MB (from wait4)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        # Reap the child ourselves: wait4 is the only call that returns its own rusage.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()), usage.ru_maxrss / 1024


def resnetc_engine(resnetc: Path, model: str, backend: str, threads: int, batch: int, weights: Path, args,
                   executable: Path | None = None, build_ms: float | None = None) -> Engine:
    """`cranelift`: `resnetc bench` (JIT in the resnetc process). `rust`, `rust-lean` and
    `aot`: the executable `resnetc build` wrote (Rust backend, with or without a weight
    budget, or Cranelift object linked with the runtime), timed by its own `--bench` mode."""
    engine = Engine(f"resnetc {backend}", None)
    if executable is None:
        cmd = [str(resnetc), "bench", model, "--backend", backend, "--threads", str(threads), "--batch", str(batch),
               "--weights", str(weights), "--runs", str(args.runs), "--json"]
    else:
        cmd = [str(executable), "--bench", str(args.runs), "--batch", str(batch), "--threads", str(threads)]

    def measure():
        proc, rss_mb = run_measured(cmd)
        if proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
            raise RuntimeError(f"resnetc rejected it: {message}")
        out = proc.stdout
        report = json.loads(out[out.index("{"):])
        stats = Stats(report["median_ms"], report["min_ms"], report["max_ms"], int(report.get("runs", 0)))
        engine.compile_ms = report.get("compile_ms", build_ms)
        # The process's own VmHWM; wait4's ru_maxrss would include the high-water mark this
        # Python process (with torch loaded) had when it forked the child.
        rss = report.get("peak_rss_mb") or rss_mb
        return stats, {"gflops": report.get("gflops"), "compile_ms": engine.compile_ms, "rss_mb": rss}

    engine.measure = measure
    return engine


def build_executable(resnetc: Path, model: str, backend: str, weights: Path, out: Path,
                     lean_weight_mb: float) -> tuple[Path, float]:
    """`resnetc build` for `rust`, `rust-lean` (the Rust backend under the weight budget
    `--max-weight-mb lean_weight_mb`) or `aot` (Cranelift object + runtime): path and wall ms."""
    exe = out / f"{model}-{backend}"
    cmd = [str(resnetc), "build", model, "--weights", str(weights), "-o", str(exe), "--emit", "exe",
           "--backend", "cranelift" if backend == "aot" else "rust"]
    if backend == "rust-lean":
        cmd += ["--max-weight-mb", str(lean_weight_mb)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip() or f"exit {proc.returncode}").splitlines()[-1])
    cached = "reusing" in proc.stderr
    return exe, (None if cached else (time.perf_counter() - t0) * 1e3)


RSS_PROBE = r"""
import resource, sys, numpy as np
kind, path, threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x = np.zeros((batch, 3, 224, 224), dtype=np.float32)
if kind == "ort":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, {s.get_inputs()[0].name: x})
else:
    import openvino as ov
    c = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                              "INFERENCE_PRECISION_HINT": "f32"})
    r = c.create_infer_request()
    run = lambda: r.infer({0: x})
for _ in range(5):
    run()
# VmHWM, not ru_maxrss: the latter keeps the forking parent's high-water mark across exec.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) / 1024)
"""


def peer_rss_mb(kind: str, onnx_path: Path, threads: int, batch: int) -> float | None:
    """Peak RSS of a fresh Python process that loads only the peer and runs it 5 times
    (the benchmark process itself also holds torch, so its RSS says nothing)."""
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, kind, str(onnx_path), str(threads), str(batch)],
                          capture_output=True, text=True)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------- model preparation


def seed_weights(resnetc: Path, model: str, out: Path, seed: int) -> Path:
    path = out / f"{model}-seed{seed}.safetensors"
    subprocess.run([str(resnetc), "seed", model, "weights", "-o", str(path), "--seed", str(seed)], check=True)
    return path


def torchvision_model(model: str, weights: Path):
    import torch
    import torchvision
    from safetensors.numpy import load_file

    net = getattr(torchvision.models, model)(weights=None)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_file(str(weights)).items()}
    result = net.load_state_dict(tensors, strict=False)
    bad_missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if bad_missing or result.unexpected_keys:
        raise SystemExit(
            f"{model}: weights do not match torchvision's names: missing {bad_missing[:5]}"
            f" ({len(bad_missing)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )
    net.eval()
    return net


def export_onnx(net, model: str, batch: int, out: Path, seed: int) -> Path:
    import torch

    path = out / f"{model}-seed{seed}-b{batch}.onnx"
    dummy = torch.zeros(batch, 3, 224, 224)
    kwargs = dict(
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        do_constant_folding=True,
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
        try:
            # The TorchScript exporter: static shapes, constant folding, no onnxscript needed.
            torch.onnx.export(net, (dummy,), str(path), dynamo=False, **kwargs)
        except TypeError:  # torch before the `dynamo` parameter
            torch.onnx.export(net, (dummy,), str(path), **kwargs)
    return path


# ----------------------------------------------------------------------------- reporting


def core_rtt_us(probe: Path | None) -> float | None:
    """A cache line's round trip between two threads, microseconds (`bench/core_rtt.c`), or
    None without the probe or when it fails: on a shared host it tells whether the two
    cores a 2-thread run gets share a cache (see BENCHMARKS.md, eighteenth session)."""
    if probe is None:
        return None
    try:
        proc = subprocess.run([str(probe)], capture_output=True, text=True, timeout=30)
        return float(proc.stdout.strip()) if proc.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def settle(probe: Path | None, limit_us: float, max_seconds: float) -> tuple[float | None, float, bool]:
    """Waits, for about `max_seconds` at most, while the core RTT probe reads above
    `limit_us`: a round trip of microseconds means the host has taken one of the two vCPUs
    away (the partner thread is not running), and any multi-threaded measurement then
    waits on it. Every engine's measurement waits alike. Returns the last reading, the
    seconds waited, and whether the probe still read above the limit (measured anyway)."""
    def high(rtt: float | None) -> bool:
        return rtt is not None and limit_us > 0 and rtt > limit_us

    rtt = core_rtt_us(probe)
    waited = 0.0
    while high(rtt) and waited < max_seconds:
        step = min(2.0, max_seconds - waited)
        time.sleep(step)
        waited += step
        rtt = core_rtt_us(probe)
    return rtt, waited, high(rtt)


def fmt(value, digits=2, default="–"):
    if value is None:
        return default
    return f"{value:.{digits}f}"


def markdown(meta: dict, rows: list[dict], checks: list[dict], notes: list[str]) -> str:
    lines = [
        "# resnetc vs ONNX Runtime / OpenVINO",
        "",
        f"- Machine: {meta['cpu']}, {meta['cpus']} logical CPUs ({meta['cpus_available']} available to this process)",
        f"- Date: {meta['date']}; resnetc {meta['resnetc_commit']}; {meta['versions']}",
        f"- Protocol: {meta['protocol']}",
        f"- Load average at start / end: {meta['loadavg_start']} / {meta['loadavg_end']}",
        "",
        "| model | threads | batch | engine | median ms | min–max ms | images/s | vs ORT | compile ms | peak RSS MB | other CPU % | steal % | core RTT µs |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(
                f"| {r['model']} | {r['threads']} | {r['batch']} | {r['engine']} | – | – | – | – | – | – | – | – | – |"
            )
            continue
        ratio = r.get("ratio_to_ort")
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['batch']} | {r['engine']} | {fmt(r['median_ms'])}"
            f" | {fmt(r['min_ms'])}–{fmt(r['max_ms'])} | {fmt(r['images_per_s'], 1)}"
            f" | {fmt(ratio)} | {fmt(r.get('compile_ms'), 0)} | {fmt(r.get('rss_mb'), 0)} | {fmt(r.get('other_cpu_pct'), 0)} | {fmt(r.get('steal_pct'), 1)} | {fmt(r.get('core_rtt_us'), 2)} |"
        )
    lines += [
        "",
        "vs ORT = engine median / ONNX Runtime median in the same configuration (< 1: faster than ORT).",
        "peak RSS = maximum resident set (VmHWM) of the measuring process (resnetc: the `resnetc bench` or model "
        "executable process; ORT/OpenVINO: a fresh Python process that loads only that engine and runs it).",
        "other CPU % = CPU time of other processes during the measurement, share of the whole machine "
        "(a background job competing for the cores shows up here).",
        "steal % = time the hypervisor ran something else on this VM's CPUs during the measurement, share of the "
        "whole machine (/proc/stat); mean over the rounds.",
        "core RTT µs = a cache line's round trip between two threads just before each round, after any wait for "
        "the host to settle (`bench/core_rtt.c`), "
        "median over the rounds. On a 2-vCPU Zen 5 VM it read 0.05-0.14 µs while the host kept the two vCPUs "
        "on cores that share a cache, about 0.35-0.41 µs while it did not; 2-thread runs that pass data between "
        "cores were then slower (a resnetc ResNet-50 executable: 13.2-13.7 against 15.4-15.5 ms). On a 2-vCPU "
        "Xeon VM it read 0.11-0.19 µs in every round.",
    ]
    if checks:
        lines += ["", "## Correctness (same input, same weights)", "",
                  "| model | batch | compared | max abs diff / max(1, max abs ref) | max abs ref |",
                  "|---|---:|---|---:|---:|"]
        for c in checks:
            lines.append(f"| {c['model']} | {c['batch']} | {c['what']} | {c['value']} | {fmt(c.get('ref_max'), 3)} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=csv_list, default=csv_list("resnet50,resnet18"),
                        help="torchvision ResNet names that are also resnetc presets (default: resnet50,resnet18)")
    parser.add_argument("--threads", type=csv_ints, default=[1, 2], help="thread counts (default: 1,2)")
    parser.add_argument("--batch", type=csv_ints, default=[1], help="batch sizes (default: 1)")
    parser.add_argument("--backends", type=csv_list, default=["cranelift"],
                        help="resnetc backends: cranelift, rust, rust-lean (rust under --lean-weight-mb), aot; "
                             "one resnetc rejects is skipped with a note (default: cranelift)")
    parser.add_argument("--lean-weight-mb", type=float, default=105.0,
                        help="the weight budget (`resnetc build --max-weight-mb`) of the rust-lean backend (default: 105)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved measurement rounds per configuration (default: 3)")
    parser.add_argument("--runs", type=int, default=30, help="minimum timed runs per measurement (default: 30)")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="minimum timed seconds per ORT/OpenVINO measurement (default: 3)")
    parser.add_argument("--warmup", type=int, default=10, help="ORT/OpenVINO warm-up runs per measurement (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed for `resnetc seed` (default: 0)")
    parser.add_argument("--no-openvino", action="store_true", help="skip OpenVINO even if installed")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness comparison")
    parser.add_argument("--resnetc", type=Path, default=Path(os.environ.get("RESNETC_BIN", REPO / "target/release/resnetc")),
                        help="resnetc binary (default: $RESNETC_BIN or target/release/resnetc)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out", help="output directory (default: bench/out)")
    parser.add_argument("--benchmarks-md", type=Path, default=None,
                        help="also write the report there (e.g. BENCHMARKS.md at the repository root)")
    parser.add_argument("--rtt-probe", type=Path, default=None,
                        help="the core_rtt executable (bench/core_rtt.c): a cache line's round trip between "
                             "two threads, measured before every round (bench/run.sh builds and passes it)")
    parser.add_argument("--settle-rtt-us", type=float, default=1.0,
                        help="with --rtt-probe: before each engine's round, wait while the probe reads above this "
                             "many microseconds (the host has taken a vCPU away); 0 never waits (default: 1.0)")
    parser.add_argument("--settle-max-s", type=float, default=60.0,
                        help="longest wait for --settle-rtt-us before measuring anyway, about this many seconds "
                             "(default: 60)")
    parser.add_argument("--jit-max-batch", type=int, default=1 << 30,
                        help="measure the Cranelift backends (cranelift, aot) only up to this batch size")
    args = parser.parse_args()

    if not args.resnetc.exists():
        parser.error(f"{args.resnetc} does not exist: build it with `cargo build --release -p resnetc-compiler --bin resnetc`")
    args.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    import onnxruntime as ort
    import torch

    ov = None
    if not args.no_openvino:
        try:
            import openvino as ov  # noqa: F811
        except Exception as e:  # ImportError, or a broken installation
            notes.append(f"OpenVINO skipped: import failed ({type(e).__name__}: {e})")
    else:
        notes.append("OpenVINO skipped: --no-openvino")

    versions = f"onnxruntime {ort.__version__}; torch {torch.__version__}"
    if ov is not None:
        versions += f"; openvino {ov.__version__}"
    flags = cpu_flags()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    meta = {
        "cpu": cpu_model() + (f" [{' '.join(simd)}]" if simd else ""),
        "cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "resnetc_commit": git_describe(),
        "resnetc_binary": str(args.resnetc),
        "versions": versions,
        "python": sys.version.split()[0],
        "protocol": (
            f"{args.rounds} interleaved round(s) per configuration, figures are medians of round medians; "
            f"ORT/OpenVINO: {args.warmup} warm-up runs, then >= {args.runs} runs and >= {args.min_seconds:g} s per round; "
            f"resnetc: `resnetc bench --runs {args.runs}` (JIT) or `EXE --bench {args.runs}` (rust, rust-lean, aot): 3 warm-up runs, then >= {args.runs} runs and >= 2 s"
            + (f"; before each engine's round, a wait (at most about {args.settle_max_s:g} s) while the core RTT probe "
               f"reads above {args.settle_rtt_us:g} us" if args.rtt_probe and args.settle_rtt_us > 0 else "")
        ),
        "loadavg_start": load_average(),
        "seed": args.seed,
    }
    log(f"# {meta['cpu']}, {meta['cpus']} CPUs, load {meta['loadavg_start']}")

    meter = CpuMeter()
    rows: list[dict] = []
    checks: list[dict] = []
    rejected: dict[str, str] = {}  # backend -> resnetc's message
    # Measurements that waited for the host to settle: (where, seconds, still unsettled).
    settled: list[tuple[str, float, bool]] = []

    for model in args.models:
        log(f"## {model}: seeding weights, exporting ONNX")
        weights = seed_weights(args.resnetc, model, args.out, args.seed)
        net = torchvision_model(model, weights)
        onnx_paths = {b: export_onnx(net, model, b, args.out, args.seed) for b in args.batch}

        if not args.no_check:
            b = args.batch[0]
            x_path = args.out / f"{model}-input-b{b}.npy"
            subprocess.run([str(args.resnetc), "seed", model, "input", "-o", str(x_path),
                            "--seed", str(args.seed + 1), "--batch", str(b)], check=True)
            x = np.load(x_path).astype(np.float32)
            with torch.no_grad():
                y_torch = net(torch.from_numpy(x)).numpy()
            sess = ort.InferenceSession(str(onnx_paths[b]), providers=["CPUExecutionProvider"])
            y_ort = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            del sess
            checks.append({"model": model, "batch": b, "what": "torch eager vs ORT",
                           "value": f"{rel_err(y_torch, y_ort):.2e}", "rel_err": rel_err(y_torch, y_ort), "ref_max": float(np.abs(y_ort).max())})
            y_path = args.out / f"{model}-resnetc-b{b}.npy"
            proc = subprocess.run([str(args.resnetc), "run", model, "--weights", str(weights), "--input", str(x_path),
                                   "--output", str(y_path), "--backend", "cranelift"], capture_output=True, text=True)
            if proc.returncode == 0:
                err = rel_err(np.load(y_path), y_ort)
                checks.append({"model": model, "batch": b, "what": "resnetc cranelift vs ORT",
                               "value": f"{err:.2e}", "rel_err": err, "ref_max": float(np.abs(y_ort).max())})
            else:
                msg = (proc.stderr.strip() or "no message").splitlines()[-1]
                checks.append({"model": model, "batch": b, "what": "resnetc cranelift vs ORT",
                               "value": f"failed: {msg}", "rel_err": None})
            if ov is not None:
                compiled = ov.Core().compile_model(str(onnx_paths[b]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                y_ov = compiled.create_infer_request().infer({0: x})[0]
                err = rel_err(y_ov, y_ort)
                checks.append({"model": model, "batch": b, "what": "OpenVINO vs ORT", "value": f"{err:.2e}", "rel_err": err,
                               "ref_max": float(np.abs(y_ort).max())})
                del compiled
            log("   " + "; ".join(f"{c['what']}: {c['value']}" for c in checks if c["model"] == model))
        del net

        executables: dict[str, tuple[Path, float | None]] = {}
        for backend in args.backends:
            if backend in ("rust", "rust-lean", "aot") and backend not in rejected:
                log(f"   building the {backend} executable")
                try:
                    executables[backend] = build_executable(args.resnetc, model, backend, weights, args.out,
                                                            args.lean_weight_mb)
                except Exception as e:
                    rejected[backend] = f"resnetc build failed: {e}"

        for batch in args.batch:
            x = np.random.default_rng(args.seed).standard_normal((batch, 3, 224, 224), dtype=np.float32)
            for threads in args.threads:
                log(f"## {model} threads={threads} batch={batch}")
                # A peer that fails in its round shows as a failed row with its message.
                engines = [onnxruntime_engine(ort, onnx_paths[batch], threads, x, args)]
                if ov is not None:
                    engines.append(openvino_engine(ov, onnx_paths[batch], threads, x, args))
                for backend in args.backends:
                    if backend in ("cranelift", "aot") and batch > args.jit_max_batch:
                        continue
                    exe, build_ms = executables.get(backend, (None, None))
                    engine = resnetc_engine(args.resnetc, model, backend, threads, batch, weights, args, exe, build_ms)
                    if backend in rejected:
                        engine.failed = rejected[backend]
                    engines.append(engine)
                peer_rss = {"ort": peer_rss_mb("ort", onnx_paths[batch], threads, batch)}
                if ov is not None:
                    peer_rss["ov"] = peer_rss_mb("ov", onnx_paths[batch], threads, batch)

                for rnd in range(args.rounds):
                    order = engines if rnd % 2 == 0 else list(reversed(engines))
                    for engine in order:
                        if engine.failed:
                            continue
                        rtt, waited, unsettled = settle(args.rtt_probe, args.settle_rtt_us, args.settle_max_s)
                        if waited > 0 or unsettled:
                            where = f"{model} threads={threads} batch={batch} round {rnd + 1} {engine.name}"
                            settled.append((where, waited, unsettled))
                            log(f"   waited {waited:.0f} s for the host to settle (core RTT now {fmt(rtt, 2)} us"
                                f"{', measured anyway' if unsettled else ''})")
                        mark = meter.start()
                        try:
                            stats, extra = engine.measure()
                        except Exception as e:
                            engine.failed = str(e)
                            if engine.name.startswith("resnetc "):
                                rejected[engine.name.split(" ", 1)[1]] = str(e)
                            log(f"   {engine.name}: skipped ({e})")
                            continue
                        other, steal = meter.stop(mark)
                        engine.rounds.append({**stats.__dict__, **extra, "other_cpu_pct": other, "steal_pct": steal,
                                              "core_rtt_us": rtt})
                        log(f"   round {rnd + 1}: {engine.name:<22} median {stats.median_ms:8.2f} ms"
                            f"  (min {stats.min_ms:.2f}, max {stats.max_ms:.2f}, {stats.runs} runs,"
                            f" other CPU {fmt(other, 0)}%, steal {fmt(steal, 1)}%, core RTT {fmt(rtt, 2)} us)")

                ort_median = None
                for engine in engines:
                    row = {"model": model, "threads": threads, "batch": batch, "engine": engine.name}
                    if not engine.rounds:
                        row["failed"] = engine.failed or "no measurement"
                        rows.append(row)
                        continue
                    median = statistics.median(r["median_ms"] for r in engine.rounds)
                    others = [r["other_cpu_pct"] for r in engine.rounds if r["other_cpu_pct"] is not None]
                    steals = [r["steal_pct"] for r in engine.rounds if r["steal_pct"] is not None]
                    rtts = [r["core_rtt_us"] for r in engine.rounds if r["core_rtt_us"] is not None]
                    rss = [r["rss_mb"] for r in engine.rounds if r.get("rss_mb") is not None]
                    if engine.name.startswith("onnxruntime"):
                        rss = [peer_rss["ort"]] if peer_rss.get("ort") else []
                    elif engine.name.startswith("openvino"):
                        rss = [peer_rss["ov"]] if peer_rss.get("ov") else []
                    if engine is engines[0]:
                        ort_median = median
                    row.update({
                        "median_ms": median,
                        "min_ms": min(r["min_ms"] for r in engine.rounds),
                        "max_ms": max(r["max_ms"] for r in engine.rounds),
                        "images_per_s": batch * 1e3 / median,
                        "ratio_to_ort": median / ort_median if ort_median else None,
                        "compile_ms": engine.compile_ms,
                        "rss_mb": max(rss) if rss else None,
                        "other_cpu_pct": statistics.mean(others) if others else None,
                        "steal_pct": statistics.mean(steals) if steals else None,
                        "core_rtt_us": statistics.median(rtts) if rtts else None,
                        "rounds": engine.rounds,
                    })
                    if engine.note:
                        row["note"] = engine.note
                    rows.append(row)
                del engines

    if settled:
        unsettled = [where for where, _, still in settled if still]
        notes.append(f"{len(settled)} measurement(s) waited for the host to settle (core RTT above {args.settle_rtt_us:g} us: "
                     f"a vCPU taken away), {sum(w for _, w, _ in settled):.0f} s in all"
                     + (f"; measured with the probe still above the limit after {args.settle_max_s:g} s: "
                        + ", ".join(unsettled) if unsettled else ""))
    for backend, message in rejected.items():
        notes.append(f"resnetc backend `{backend}` skipped: {message}")
    for row in rows:
        if row.get("note") and row["engine"].startswith("openvino"):
            notes.append(f"OpenVINO effective settings ({row['model']}, threads={row['threads']}): {row['note']}")
    notes.append("compile ms: ORT session creation, OpenVINO read+compile_model (fastest of the rounds); resnetc cranelift: JIT compile "
                 "time reported by `resnetc bench` (excludes weight loading); resnetc rust / aot: wall time of "
                 "`resnetc build --emit exe` (rust: cargo building the generated crate, with the runtime's "
                 "dependencies already built; '–' when an identical earlier build was reused).")
    if "rust-lean" in args.backends:
        notes.append(f"resnetc rust-lean: the Rust executable built with `--max-weight-mb {args.lean_weight_mb:g}` "
                     "(a weight budget: raw Winograd weights, smaller tiles or direct convolution where they cost the least "
                     "time per byte saved).")
    meta["loadavg_end"] = load_average()

    text = markdown(meta, rows, checks, notes)
    (args.out / "results.md").write_text(text)
    if args.benchmarks_md is not None:
        args.benchmarks_md.write_text(text)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": rows, "correctness": checks,
                                                       "notes": notes}, indent=2) + "\n")
    print(text, end="")
    log(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
