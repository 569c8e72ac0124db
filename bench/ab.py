#!/usr/bin/env python3
"""Interleaved A/B timing of resnetc executables (`resnetc build ... --emit exe`).

    bench/ab.py ROUNDS THREADS BATCH EXE_A EXE_B [RUNS]

Runs `EXE --bench RUNS --threads THREADS --batch BATCH` for A then B, then B then A, and so
on for ROUNDS rounds, so that drift on a shared host falls on both alike. Prints each
round's medians and, at the end, the median of round medians of each and their ratio B/A.
"""
import json
import statistics
import subprocess
import sys


def median_ms(exe: str, runs: int, threads: int, batch: int) -> float:
    cmd = [exe, "--bench", str(runs), "--threads", str(threads), "--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    # The executable prints one JSON object (its last line of output).
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def main() -> None:
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    rounds, threads, batch = (int(a) for a in sys.argv[1:4])
    exes = sys.argv[4:6]
    runs = int(sys.argv[6]) if len(sys.argv) == 7 else 20
    times: dict[str, list[float]] = {e: [] for e in exes}
    for r in range(rounds):
        order = exes if r % 2 == 0 else exes[::-1]
        for e in order:
            times[e].append(median_ms(e, runs, threads, batch))
        print(f"round {r + 1}: " + "  ".join(f"{e}: {times[e][-1]:.3f} ms" for e in exes), flush=True)
    a, b = (statistics.median(times[e]) for e in exes)
    print(f"A {exes[0]}: {a:.3f} ms   B {exes[1]}: {b:.3f} ms   B/A {b / a:.4f}")


if __name__ == "__main__":
    main()
