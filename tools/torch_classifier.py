#!/usr/bin/env python3
"""The PyTorch side of README's "Your own PyTorch classifier": train a
torchvision classifier on some classes of an image folder and save it the
way the README tells a user to, then take an extended model back from
lwf-engine and classify with it in PyTorch.

Run by hand in a virtualenv outside the repository with torch, torchvision,
safetensors and pillow (never a dependency of lwf-engine):

    # a torchvision resnet18 on classes 0-4 of a colour folder
    python3 tools/torch_classifier.py train /work/colour10 --classes 0-4 \\
        --out /tmp/r18.safetensors
    # the same network trained on every class at once (the upper bound)
    python3 tools/torch_classifier.py train /work/colour10 --classes 0-9 \\
        --out /tmp/r18-joint.safetensors
    # an lwf-engine model (imported from r18, then extended) back in PyTorch
    python3 tools/torch_classifier.py handback /tmp/r18-extended.safetensors \\
        /work/colour10 [--json predictions.json]

The folder is DIR/train/<class>/*.png and DIR/test/<class>/*.png with the
class folders' sorted order as class ids (tools/colour_folder.py writes
one). Images are read as RGB, scaled to [0, 1] and normalised with
CIFAR-10's per-channel mean and std (the values the README's import
command passes). Training is SGD with momentum 0.9 and weight decay 5e-4,
random crop (pad 4) and horizontal flip, seeded.

`handback` builds the architecture with `fc` grown to every class the
model knows, restores the trunk with `load_state_dict(strict=False)` (the
file's trunk tensors carry torchvision's names; heads.N.*, class
statistics and the like are ignored), sets `fc` to the heads stacked in
task order, and prints the accuracy on the test images of the known
classes; `--json` writes its softmax per image file, to compare with
`lwf-engine predict --classifier heads --json`.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def class_folders(root, split):
    return sorted(d for d in os.listdir(os.path.join(root, split)) if os.path.isdir(os.path.join(root, split, d)))


def read_split(root, split, ids):
    """Images (N × 3 × H × W in [0, 1]), class ids and file paths of the classes `ids`."""
    names = class_folders(root, split)
    xs, ys, files = [], [], []
    for c in ids:
        folder = os.path.join(root, split, names[c])
        for f in sorted(os.listdir(folder)):
            path = os.path.join(folder, f)
            xs.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
            ys.append(c)
            files.append(path)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ys), files


def parse_ids(spec):
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def build(arch, classes):
    return getattr(torchvision.models, arch)(num_classes=classes)


def augment(x, gen):
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    out = torch.empty_like(x)
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        img = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = img.flip(2) if flip[i] else img
    return out


def accuracy(net, x, y, rows):
    """Eval-mode accuracy; `rows` maps a logit column to its class id."""
    net.eval()
    correct = 0
    probs = []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            p = F.softmax(net((x[i : i + 256] - MEAN) / STD), dim=1)
            probs.append(p)
            correct += (torch.tensor(rows)[p.argmax(1)] == y[i : i + 256]).sum().item()
    return correct / len(x), torch.cat(probs)


def train(a):
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    ids = parse_ids(a.classes)
    x, y, _ = read_split(a.data, "train", ids)
    xt, yt, _ = read_split(a.data, "test", ids)
    local = torch.tensor([ids.index(int(c)) for c in y])
    net = build(a.arch, len(ids))
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs)
    gen = torch.Generator().manual_seed(a.seed)
    start = time.time()
    for epoch in range(a.epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), a.batch_size):
            idx = order[i : i + a.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two images to train
            batch = (augment(x[idx], gen) - MEAN) / STD
            loss = F.cross_entropy(net(batch), local[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        acc, _ = accuracy(net, xt, yt, ids)
        print(f"epoch {epoch + 1}/{a.epochs}: test accuracy {100 * acc:.2f}% ({time.time() - start:.0f}s)", flush=True)
    tmp = a.out + ".tmp"
    save_file(net.state_dict(), tmp)
    os.replace(tmp, a.out)
    print(json.dumps({"arch": a.arch, "classes": ids, "test_accuracy": acc, "train_seconds": time.time() - start}))


def handback(a):
    torch.set_num_threads(a.threads)
    tensors = load_file(a.model)
    heads = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("heads.")})
    weight = torch.cat([tensors[f"heads.{h}.weight"] for h in heads])
    bias = torch.cat([tensors[f"heads.{h}.bias"] for h in heads])
    with open(a.model, "rb") as f:  # the metadata says which class each row is
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = json.loads(header["__metadata__"]["lwf_engine"])
    rows = [c for h in meta["heads"] for c in h["classes"]]
    net = build(a.arch, len(rows))
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"}, f"trunk tensors missing: {missing}"
    net.fc.weight.data.copy_(weight)
    net.fc.bias.data.copy_(bias)
    xt, yt, files = read_split(a.data, "test", sorted(rows))
    acc, probs = accuracy(net, xt, yt, rows)
    print(f"{a.model} in PyTorch: {len(heads)} heads, {len(rows)} classes; accuracy over them {100 * acc:.2f}% "
          f"on {len(xt)} test images; {len(unexpected)} file tensors ignored (heads, statistics)")
    if a.json:
        out = [{"file": f, "probabilities": dict(zip(map(str, rows), p.tolist()))} for f, p in zip(files, probs)]
        with open(a.json, "w") as f:
            json.dump(out, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("data")
    t.add_argument("--classes", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--arch", default="resnet18")
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    h = sub.add_parser("handback")
    h.add_argument("model")
    h.add_argument("data")
    h.add_argument("--arch", default="resnet18")
    h.add_argument("--json")
    h.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    train(a) if a.cmd == "train" else handback(a)


if __name__ == "__main__":
    main()
