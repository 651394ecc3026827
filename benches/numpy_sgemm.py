#!/usr/bin/env python3
"""numpy/OpenBLAS float32 sgemm on the shapes of benches/kernels.rs.

Prints one `summary` line per shape in the same format as the Rust bench, so
the two outputs can be joined (see benches/README.md):

    summary sgemm/<name> <m>x<n>x<k> <TA><TB>  <median ms> ms  <GFLOP/s> GFLOP/s

Threads: OpenBLAS is pinned to ONE thread (OPENBLAS_NUM_THREADS=1, set before
numpy is imported, since OpenBLAS reads it at load time). Multi-threaded
OpenBLAS busy-waits and was measured 10-1000x slower on a shared 2-vCPU VM,
so 1 thread is numpy's best count there.
Pass --threads N to override.

Timing: each shape runs `reps` products per sample, with reps chosen so that
a sample lasts >= 50 ms; the median over >= 7 samples is reported. The
product writes into a preallocated output (`np.matmul(a, b, out=c)`), and
transposed operands are views (`.T`), so OpenBLAS gets transpose flags and no
copy is made, as in the Rust bench.

Usage: python3 benches/numpy_sgemm.py [--threads N] [--samples S] [filter]
"""

import os
import sys


def parse_args(argv):
    threads, samples, pattern = "1", 7, ""
    i = 0
    while i < len(argv):
        if argv[i] == "--threads":
            threads, i = argv[i + 1], i + 2
        elif argv[i] == "--samples":
            samples, i = max(7, int(argv[i + 1])), i + 2
        else:
            pattern, i = argv[i], i + 1
    return threads, samples, pattern


THREADS, SAMPLES, PATTERN = parse_args(sys.argv[1:])
# Must happen before numpy (and so OpenBLAS) is loaded.
os.environ["OPENBLAS_NUM_THREADS"] = THREADS
os.environ["OMP_NUM_THREADS"] = THREADS

import time  # noqa: E402

import numpy as np  # noqa: E402

# Keep in sync with SGEMM_SHAPES in benches/kernels.rs:
# name, m, n, k, trans_a, trans_b  (C[m,n] = op(A)[m,k] . op(B)[k,n]).
SHAPES = [
    ("fc1_fwd", 128, 256, 3136, False, True),
    ("fc1_dW", 256, 3136, 128, True, False),
    ("fc1_dX", 128, 3136, 256, False, False),
    ("head_fwd", 128, 5, 256, False, True),
    ("head_dW", 5, 256, 128, True, False),
    ("head_dX", 128, 256, 5, False, False),
    ("conv1_fwd_img", 32, 784, 9, False, False),
    ("conv1_dcols_img", 9, 784, 32, True, False),
    ("conv1_dW_img", 32, 9, 784, False, True),
    ("conv2_fwd_img", 64, 196, 288, False, False),
    ("conv2_dcols_img", 288, 196, 64, True, False),
    ("conv2_dW_img", 64, 288, 196, False, True),
    ("conv1_fwd_batch", 32, 100352, 9, False, False),
    ("conv2_fwd_batch", 64, 25088, 288, False, False),
    ("conv1_im2col", 100352, 32, 9, False, False),
    ("conv2_im2col", 25088, 64, 288, False, False),
    ("square_1024", 1024, 1024, 1024, False, False),
]

MIN_SAMPLE_S = 0.05


def operands(rng, m, n, k, ta, tb):
    """Row-major storage as the Rust bench: A stored (k, m) when transposed."""
    a = rng.uniform(-1, 1, size=(k, m) if ta else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, size=(n, k) if tb else (k, n)).astype(np.float32)
    return (a.T if ta else a), (b.T if tb else b)


def median_seconds(f):
    f()  # warm up (page faults, OpenBLAS buffers)
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            f()
        el = time.perf_counter() - start
        if el >= MIN_SAMPLE_S:
            break
        reps = max(reps * 2, int(reps * MIN_SAMPLE_S * 1.2 / max(el, 1e-9)))
    samples = []
    for _ in range(SAMPLES):
        start = time.perf_counter()
        for _ in range(reps):
            f()
        samples.append((time.perf_counter() - start) / reps)
    samples.sort()
    mid = len(samples) // 2
    return samples[mid] if len(samples) % 2 else (samples[mid - 1] + samples[mid]) / 2


def main():
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}; OPENBLAS_NUM_THREADS={THREADS}; {SAMPLES} samples >= {MIN_SAMPLE_S * 1e3:.0f} ms")
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            print(f"# {info.get('internal_api')} {info.get('version')} {info.get('architecture')} threads={info.get('num_threads')}")
    except ImportError:
        pass
    for name, m, n, k, ta, tb in SHAPES:
        if PATTERN not in name:
            continue
        a, b = operands(rng, m, n, k, ta, tb)
        c = np.empty((m, n), dtype=np.float32)
        t = median_seconds(lambda: np.matmul(a, b, out=c))
        flops = 2.0 * m * n * k
        key = f"sgemm/{name}"
        shape = f"{m}x{n}x{k} {'T' if ta else 'N'}{'T' if tb else 'N'}"
        print(f"summary {key:<26} {shape:<22} {t * 1e3:>10.4f} ms {flops / t / 1e9:>9.2f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
