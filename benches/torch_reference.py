#!/usr/bin/env python3
"""The `lwf-engine bench` protocol written in plain PyTorch, for speed comparisons.

What it runs (DESIGN.md's two-task protocol with the defaults of `Hyper`):
  * cnn-s: conv 3x3 pad 1 (1->32) + 2x2 max pool + ReLU, conv 3x3 pad 1 (32->64)
    + max pool + ReLU, flatten, linear 3136->256 + ReLU, one linear head per task;
  * task 1, classes 0-4: trunk + head 1 trained with cross-entropy, 3 epochs;
  * task 2, classes 5-9, LwF: Y_o = head 1's logits on the new images, recorded
    once before anything changes; a new head; 1 warm-up epoch that trains only
    the new head (the trunk and head 1 are frozen, so the distillation term is
    constant and left out); 3 epochs of CE + lambda_o * KD(T = 2) on everything;
  * evaluation of the whole test set (features once, both heads, task-aware
    accuracy) in inference mode.
Batch 128, a fresh SGD (lr 0.05, momentum 0.9, weight decay 5e-4) per phase,
a new shuffle every epoch, the last partial batch kept. Images are scaled to
[0, 1] and normalised with mean 0.2860, std 0.3530.

Timed as `BenchReport` (src/app/bench.rs) defines it: images through training
steps divided by the wall seconds of the phase (for LwF the Y_o recording and
the warm-up are inside the phase), and test images / seconds of the evaluation.
Data loading and start-up are outside every timer.

Prints one JSON line. Usage (torch lives in a virtualenv outside the repository,
see benches/README.md):
    ../venv-torch/bin/python benches/torch_reference.py --threads 2
"""
import argparse, gzip, json, os, resource, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = 0.2860, 0.3530
TASKS = [range(0, 5), range(5, 10)]


def read_idx(path):
    """An IDX file (gzip-compressed or not) as a numpy array of unsigned bytes."""
    if not os.path.exists(path):
        path += ".gz"
    raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
    # Header: two zero bytes, the element type (0x08 = ubyte), the number of
    # dimensions, then each dimension as a big-endian uint32.
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data_dir, name):
    """(normalised images N x 1 x 28 x 28, labels) of 'train' or 't10k'."""
    images = read_idx(os.path.join(data_dir, f"{name}-images-idx3-ubyte"))
    labels = read_idx(os.path.join(data_dir, f"{name}-labels-idx1-ubyte"))
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x[:, None]).contiguous(), torch.from_numpy(labels.astype(np.int64))


def task_subset(x, y, classes, limit=None):
    """A task's images, in file order, with labels counted from its first class."""
    keep = torch.nonzero((y >= classes.start) & (y < classes.stop)).flatten()[:limit]
    return x[keep], y[keep] - classes.start


class CnnS(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 7 * 7, 256)
        self.heads = nn.ModuleList()

    def features(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return F.relu(self.fc(x.flatten(1)))

    def trunk(self):
        return [self.conv1, self.conv2, self.fc]


def set_trainable(modules, on):
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(on)


def run_epochs(model, x, y, epochs, gen, loss_fn, a):
    """Train every parameter that requires grad; return the images it stepped on."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=5e-4)
    images = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), a.batch):
            idx = order[i:i + a.batch]
            loss = loss_fn(model.features(x[idx]), y[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(idx)
    return images


def evaluate(model, x, y, n_tasks, batch):
    """Task-aware accuracy of each of the first n_tasks tasks (each test image
    judged by its own task's head; features computed once a batch), and the
    number of test images classified."""
    keep = torch.nonzero(y < TASKS[n_tasks - 1].stop).flatten()
    x, y = x[keep], y[keep]
    with torch.inference_mode():
        preds = [[] for _ in range(n_tasks)]
        for i in range(0, len(x), batch):
            f = model.features(x[i:i + batch])
            for t in range(n_tasks):
                preds[t].append(model.heads[t](f).argmax(1) + TASKS[t].start)
        task = y // len(TASKS[0])  # the tasks are equal, contiguous class ranges
        acc = []
        for t in range(n_tasks):
            mine = task == t
            acc.append(round(float((torch.cat(preds[t])[mine] == y[mine]).float().mean()), 4))
    return acc, len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--data", default=os.path.join(ROOT, "datasets", "fashion-mnist"))
    ap.add_argument("--train-limit", type=int, default=None, help="first N training images of each task")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--lambda-o", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)  # the epoch shuffles

    xtr, ytr = load_split(a.data, "train")
    xte, yte = load_split(a.data, "t10k")
    (x1, y1), (x2, y2) = (task_subset(xtr, ytr, c, a.train_limit) for c in TASKS)
    model = CnnS()

    # Task 1: plain training of the trunk and a fresh head.
    start = time.perf_counter()
    model.heads.append(nn.Linear(256, len(TASKS[0])))
    ce = lambda f, y, idx: F.cross_entropy(model.heads[0](f), y)
    plain_images = run_epochs(model, x1, y1, a.epochs, gen, ce, a)
    plain_seconds = time.perf_counter() - start
    acc1, _ = evaluate(model, xte, yte, 1, a.batch)

    # Task 2, LwF. (1) Y_o: the old head's logits on the new images.
    start = time.perf_counter()
    with torch.no_grad():
        y_old = torch.cat([model.heads[0](model.features(x2[i:i + a.batch]))
                           for i in range(0, len(x2), a.batch)])
    # (2) The new head. (3) Warm-up: only the new head trains, on its CE.
    model.heads.append(nn.Linear(256, len(TASKS[1])))
    set_trainable(model.trunk() + [model.heads[0]], False)
    ce_new = lambda f, y, idx: F.cross_entropy(model.heads[1](f), y)
    lwf_images = run_epochs(model, x2, y2, a.warmup_epochs, gen, ce_new, a)

    # (4) Everything trains on CE + lambda_o * KD, where KD is the cross-entropy
    # of the old head's softened outputs against the softened Y_o (no T^2).
    def ce_kd(f, y, idx):
        soft_old = F.softmax(y_old[idx] / a.temperature, dim=1)
        log_now = F.log_softmax(model.heads[0](f) / a.temperature, dim=1)
        kd = -(soft_old * log_now).sum(1).mean()
        return F.cross_entropy(model.heads[1](f), y) + a.lambda_o * kd

    set_trainable(model.trunk() + [model.heads[0]], True)
    lwf_images += run_epochs(model, x2, y2, a.epochs, gen, ce_kd, a)
    lwf_seconds = time.perf_counter() - start

    # Evaluation of the whole test set with both heads: the timed inference.
    start = time.perf_counter()
    acc2, n_test = evaluate(model, xte, yte, 2, a.batch)
    eval_seconds = time.perf_counter() - start

    print(json.dumps({
        "backend": f"torch {torch.__version__} cpu",
        "threads": torch.get_num_threads(),
        "batch_size": a.batch,
        "plain_epoch_images_per_second": plain_images / plain_seconds,
        "lwf_phase_images_per_second": lwf_images / lwf_seconds,
        "eval_images_per_second": n_test / eval_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "plain_seconds": plain_seconds,
        "lwf_seconds": lwf_seconds,
        "eval_seconds": eval_seconds,
        "accuracy_after_task1": acc1,  # task-aware, per task seen
        "accuracy_after_task2": acc2,
    }))


if __name__ == "__main__":
    main()
