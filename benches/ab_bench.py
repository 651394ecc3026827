#!/usr/bin/env python3
"""Alternate two (or more) `lwf-engine bench --json` commands and print medians.

On a shared, noisy machine two configurations compare fairly only when they
run interleaved in the same session. Each argument pair is a label and a
shell command that prints `lwf-engine bench --json`'s line last.

With exactly two commands they run in pairs, in alternating order (A B,
B A, A B, ...), and it also prints, per measure, the median of the per-pair
ratios B/A, their quartiles and how many pairs B won: on a shared machine
whose speed drifts by ±10 % from one minute to the next, a pair's ratio is
steadier than either median.

Example (the Winograd/direct convolutions against im2col + gemm):
    cargo build --release
    python3 benches/ab_bench.py 5 \
        default "target/release/lwf-engine bench --threads 2 --train-limit 10000 --epochs 1 --json" \
        im2col  "target/release/lwf-engine bench --threads 2 --train-limit 10000 --epochs 1 --json --im2col-only"
"""
import json, statistics, subprocess, sys

KEYS = ("plain_epoch_images_per_second", "lwf_phase_images_per_second", "eval_images_per_second")


def main():
    if len(sys.argv) < 4 or len(sys.argv) % 2 != 0:
        sys.exit(__doc__)
    runs = int(sys.argv[1])
    pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
    results = {label: [] for label, _ in pairs}
    for i in range(runs):
        order = pairs if len(pairs) != 2 or i % 2 == 0 else pairs[::-1]
        for label, cmd in order:
            p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"ab_bench: `{cmd}` failed: {p.stderr.strip()}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            results[label].append([r[k] for k in KEYS])
    for label, rows in results.items():
        med = [statistics.median(row[i] for row in rows) for i in range(len(KEYS))]
        print(f"{label:14} plain {med[0]:7.0f}  lwf phase {med[1]:7.0f}  eval {med[2]:7.0f} images/s  (medians of {len(rows)})")
    if len(pairs) == 2:
        (a, rows_a), (b, rows_b) = results.items()
        for i, name in enumerate(("plain", "lwf phase", "eval")):
            ratios = sorted(rb[i] / ra[i] for ra, rb in zip(rows_a, rows_b))
            q = lambda f: ratios[min(len(ratios) - 1, int(f * len(ratios)))]
            wins = sum(r > 1 for r in ratios)
            print(f"{b}/{a} {name:9} per-pair ratio median {statistics.median(ratios):.3f} "
                  f"(quartiles {q(0.25):.3f} {q(0.75):.3f}; {b} faster in {wins} of {len(ratios)})")


if __name__ == "__main__":
    main()
