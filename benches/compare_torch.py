#!/usr/bin/env python3
"""lwf-engine vs a PyTorch version of the same protocol, side by side on this machine.

Runs, alternating, `lwf-engine bench --threads N --json` and
`benches/torch_reference.py --threads N` (the same two-task protocol in plain
PyTorch, timed the same way), N times each, and prints the medians and the
ratios: plain training of task 1, the whole LwF phase of task 2 (Y_o
recording + warm-up + epochs), evaluation throughput, and each process's peak
RSS (from wait4, so each process is measured alone).

With `--arch resnet18 --data DIR` it compares ResNet-18 instead:
`lwf-engine bench --arch resnet18 --data DIR --val-fraction 0 --batch-size B
--epochs E` against `benches/torch_resnet.py` (torchvision's resnet18 on the
same folder, the same task-1 classes, batch and epochs), alternating, and
reports plain training, evaluation and peak RSS (the engine's LwF phase has no
counterpart there). `--image-size S` resizes the folder on both sides (e.g.
224 with `--batch 32`).

Usage (torch goes into a virtualenv outside the repository; benches/README.md):
    python3 -m venv ../venv-torch && ../venv-torch/bin/pip install numpy torch
    cargo build --release
    ../venv-torch/bin/python benches/compare_torch.py --runs 3
    ../venv-torch/bin/python benches/compare_torch.py --arch resnet18 --data /work/colour5 --runs 3
"""
import argparse, json, os, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ["plain_epoch_images_per_second", "lwf_phase_images_per_second", "eval_images_per_second"]


def run(cmd, env=None):
    """Run cmd; return (its last stdout line as JSON, peak RSS in MB of that process alone)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"compare_torch: {' '.join(cmd)} failed with status {status}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024.0


def measure(cmd, env=None):
    r, rss = run(cmd, env)
    r.setdefault("lwf_phase_images_per_second", float("nan"))
    if "eval_by_batch" in r:
        # lwf-engine's bench goes on to time inference at batch sizes up to
        # 1000, which the reference does not; its peak_rss_mb is read before.
        rss = r["peak_rss_mb"]
    return [r[k] for k in KEYS] + [rss], r


def cpu_model():
    """The CPU's model name and its widest vector extension, from /proc/cpuinfo."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({simd})"


def main():
    ap = argparse.ArgumentParser(description="lwf-engine bench vs benches/torch_reference.py")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--simd", metavar="PATH", help="avx512, avx2 or portable: sets LWF_SIMD for lwf-engine")
    ap.add_argument("--train-limit", type=int, help="first N training images of each task, on both sides (quick runs)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "lwf-engine"))
    ap.add_argument("--arch", choices=["cnn-s", "resnet18"], default="cnn-s",
                    help="resnet18: torchvision's resnet18 (benches/torch_resnet.py) on --data")
    ap.add_argument("--data", help="image folder (train/, test/) for --arch resnet18")
    ap.add_argument("--image-size", type=int, help="resize the folder's images on both sides (resnet18)")
    ap.add_argument("--batch", type=int, default=128, help="resnet18: batch size on both sides")
    ap.add_argument("--epochs", type=int, default=1, help="resnet18: training epochs on both sides")
    a = ap.parse_args()
    limit = ["--train-limit", str(a.train_limit)] if a.train_limit else []
    if a.arch == "resnet18":
        if not a.data:
            sys.exit("compare_torch: --arch resnet18 needs --data DIR")
        size = ["--image-size", str(a.image_size)] if a.image_size else []
        ours_cmd = [a.binary, "bench", "--backend", "cpu", "--threads", str(a.threads), "--json",
                    "--arch", "resnet18", "--data", a.data, "--val-fraction", "0",
                    "--batch-size", str(a.batch), "--epochs", str(a.epochs)] + size + limit
        torch_cmd = [sys.executable, os.path.join(ROOT, "benches", "torch_resnet.py"),
                     "--threads", str(a.threads), "--data", a.data, "--batch", str(a.batch),
                     "--epochs", str(a.epochs)] + size
        if a.train_limit:
            sys.exit("compare_torch: --train-limit is for cnn-s; make a smaller folder instead")
        return compare(a, ours_cmd, torch_cmd, resnet=True)
    ours_cmd = [a.binary, "bench", "--threads", str(a.threads), "--json"] + limit
    torch_cmd = [sys.executable, os.path.join(ROOT, "benches", "torch_reference.py"),
                 "--threads", str(a.threads)] + limit
    return compare(a, ours_cmd, torch_cmd, resnet=False)


def compare(a, ours_cmd, torch_cmd, resnet):
    ours_env = dict(os.environ, LWF_SIMD=a.simd) if a.simd else None
    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; {a.threads} threads; "
          f"LWF_SIMD={a.simd or os.environ.get('LWF_SIMD', '(best available)')}", flush=True)

    rows = {"ours": [], "torch": []}
    peak_fracs = []
    for i in range(a.runs):
        o, ours_r = measure(ours_cmd, ours_env)
        t, tr = measure(torch_cmd)
        peak_fracs.append(ours_r.get("plain_epoch_peak_fraction"))
        rows["ours"].append(o)
        rows["torch"].append(t)
        fmt = lambda v: "[" + ", ".join(f"{x:.0f}" for x in v) + "]"
        if resnet:
            frac = ours_r.get("plain_epoch_peak_fraction")
            print(f"run {i + 1}: ours {fmt(o)}  torch {fmt(t)}  (ours: plain epoch at "
                  f"{100 * frac if frac else float('nan'):.1f}% of the FMA peak; {tr['backend']}, "
                  f"{tr['train_images']} training images at {tr['image_size']}x{tr['image_size']})",
                  flush=True)
        else:
            print(f"run {i + 1}: ours {fmt(o)}  torch {fmt(t)}  "
                  f"({tr['backend']}, accuracy after task 1 {tr['accuracy_after_task1']}, "
                  f"after task 2 {tr['accuracy_after_task2']})", flush=True)
    med = {k: [statistics.median(col) for col in zip(*v)] for k, v in rows.items()}
    names = ["plain training (img/s)", "LwF phase (img/s)", "evaluation (img/s)", "peak RSS (MB)"]
    if resnet:
        fracs = [r for r in peak_fracs if r is not None]
        if fracs:
            print(f"lwf-engine plain epoch, share of the FMA peak: median {100 * statistics.median(fracs):.1f}%")
    print(f"\nmedians of {a.runs} alternating runs, {a.threads} threads"
          + (f", {a.arch} batch {a.batch}" + (f" at {a.image_size}x{a.image_size}" if a.image_size else "")
             if resnet else ""))
    print(f"{'':24} {'lwf-engine':>12} {'PyTorch':>12} {'ratio':>8}")
    for i, n in enumerate(names):
        if resnet and i == 1:
            continue  # no LwF phase on the PyTorch side
        o, t = med["ours"][i], med["torch"][i]
        print(f"{n:24} {o:12.0f} {t:12.0f} {o / t:8.2f}")


if __name__ == "__main__":
    main()
