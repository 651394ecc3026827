#!/usr/bin/env python3
"""lwf-engine vs the PyTorch reference, side by side on this machine, same run.

Runs, alternating, `lwf-engine bench --threads 2 --json` and a PyTorch
reference of the same protocol (`lwf_ref.py`, two-task, lwf, --threads 2;
`eval_speed.py` for inference; not part of this repository: pass the folder
that holds them with --reference), N times each, and prints the medians and
the ratios:
plain training of task 1, the whole LwF phase of task 2 (Y_o recording +
warm-up + epochs), evaluation throughput, and each process's peak RSS
(from wait4, so each process is measured alone).

Usage (see README "Benchmarks"; torch goes into a throw-away virtualenv):
    python3 -m venv ../torch-venv && ../torch-venv/bin/pip install torch numpy
    cargo build --release
    ../torch-venv/bin/python benches/compare_torch.py --runs 3
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "..", "shared", "reference")  # --reference overrides


def run(cmd, env=None):
    """Run cmd; return (stdout, peak RSS in MB of that process alone)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"compare_torch: {' '.join(cmd)} failed with status {status}")
    return out, usage.ru_maxrss / 1024.0


def ours(threads):
    out, rss = run([os.path.join(ROOT, "target", "release", "lwf-engine"), "bench", "--threads", str(threads), "--json"])
    r = json.loads(out.strip().splitlines()[-1])
    return r["plain_epoch_images_per_second"], r["lwf_phase_images_per_second"], r["eval_images_per_second"], rss


def reference(threads):
    env = dict(os.environ, FASHION_MNIST_DIR=os.path.join(ROOT, "datasets", "fashion-mnist"))
    with tempfile.TemporaryDirectory() as d:
        _, rss = run([sys.executable, os.path.join(REF, "lwf_ref.py"), "--protocol", "two-task", "--seed", "0",
                      "--threads", str(threads), "--methods", "lwf", "--out-dir", d], env)
        r = json.load(open(os.path.join(d, "two-task_lwf_seed0_ep3.json")))
    t = r["timings"]
    plain = t["per_task"][0]["images_per_second"]
    lwf = t["lwf_task2_images_per_second"]
    out, _ = run([sys.executable, os.path.join(REF, "eval_speed.py"), str(threads), "128"], env)
    ev = float(re.search(r"eval (\d+) img/s", out).group(1))
    return plain, lwf, ev, rss


def main():
    global REF
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", default=REF, help="folder with lwf_ref.py and eval_speed.py")
    a = ap.parse_args()
    REF = a.reference
    if not os.path.isfile(os.path.join(REF, "lwf_ref.py")):
        sys.exit(f"compare_torch: no lwf_ref.py in {REF}: pass --reference DIR")
    rows = {"ours": [], "torch": []}
    for i in range(a.runs):
        rows["ours"].append(ours(a.threads))
        rows["torch"].append(reference(a.threads))
        print(f"run {i + 1}: ours {rows['ours'][-1]}  torch {rows['torch'][-1]}", flush=True)
    med = {k: [statistics.median(col) for col in zip(*v)] for k, v in rows.items()}
    names = ["plain training (img/s)", "LwF phase (img/s)", "evaluation (img/s)", "peak RSS (MB)"]
    print(f"\nmedians of {a.runs} alternating runs, {a.threads} threads")
    print(f"{'':24} {'lwf-engine':>12} {'PyTorch':>12} {'ratio':>8}")
    for i, n in enumerate(names):
        o, t = med["ours"][i], med["torch"][i]
        print(f"{n:24} {o:12.0f} {t:12.0f} {o / t:8.2f}")


if __name__ == "__main__":
    main()
