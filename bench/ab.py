#!/usr/bin/env python3
"""Interleaved A/B timing of resnetc executables (`resnetc build ... --emit exe`).

    bench/ab.py ROUNDS THREADS BATCH EXE_A EXE_B [RUNS]

Runs `EXE --bench RUNS --threads THREADS --batch BATCH` (RUNS: 20 unless given) for A then
B, then B then A, and so on for ROUNDS rounds, so that drift on a shared host falls on both
alike. Prints each round's medians and, at the end, the median of round medians of each
and their ratio B/A. A and B may be the same executable (an A/A run shows the noise).
"""
import json
import statistics
import subprocess
import sys


def median_ms(exe: str, runs: int, threads: int, batch: int) -> float:
    cmd = [exe, "--bench", str(runs), "--threads", str(threads), "--batch", str(batch)]
    # stderr passes through, so an executable's error message reaches the user.
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    # The executable prints one JSON object (its last line of output).
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def main() -> None:
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    try:
        rounds, threads, batch = (int(a) for a in sys.argv[1:4])
        runs = int(sys.argv[6]) if len(sys.argv) == 7 else 20
    except ValueError:
        sys.exit(__doc__)
    if min(rounds, threads, batch, runs) < 1:
        sys.exit("ROUNDS, THREADS, BATCH and RUNS must be at least 1")
    exes = sys.argv[4:6]
    # By position, not by path: A and B may be the same file.
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            times[i].append(median_ms(exes[i], runs, threads, batch))
        print(f"round {r + 1}: A {times[0][-1]:.3f} ms  B {times[1][-1]:.3f} ms", flush=True)
    a, b = (statistics.median(t) for t in times)
    print(f"A {exes[0]}: {a:.3f} ms   B {exes[1]}: {b:.3f} ms   B/A {b / a:.4f}")


if __name__ == "__main__":
    main()
