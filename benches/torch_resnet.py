#!/usr/bin/env python3
"""torchvision's resnet18 trained and evaluated on an image folder, timed like
`lwf-engine bench --arch resnet18 --data DIR` times its plain epochs and its
evaluation; the PyTorch side of `compare_torch.py --arch resnet18`.

What it runs, to match the engine's bench on a folder of K classes:
  * the folder's images (`DIR/train/<class>/*.png`, `DIR/test/<class>/*.png`,
    class ids = sorted folder names), decoded with Pillow as RGB, resized
    (bilinear) to --image-size when it differs from theirs, kept as bytes;
    each batch scaled to [0, 1] and normalised per channel (the training
    images' own mean and standard deviation) as it is taken;
  * training: `torchvision.models.resnet18(num_classes=K)` in train mode
    (batch statistics in BatchNorm), on the training images of the bench's
    task 1 (classes 0 .. K//2 - 1, the engine's two-task protocol; all of
    them with --all-classes), cross-entropy, SGD (lr 0.05, momentum 0.9,
    weight decay 5e-4), --batch images a step, a new shuffle each epoch, the
    last partial batch kept, --epochs epochs; images through steps / wall
    seconds;
  * evaluation: every test image, eval mode (running statistics) under
    `torch.no_grad()`, argmax per row; images / seconds.
Data loading, decoding and model construction are outside every timer.
`--synthetic N` skips the folder and times N random training and N random test
images of 3 x S x S instead (the large-image variant, where only the timing
matters).

Prints one JSON line with the same field names as the engine's BenchReport
(plain_epoch_images_per_second, eval_images_per_second, peak_rss_mb, ...).

    ../venv-torch/bin/python benches/torch_resnet.py --data /work/colour5 --threads 2
"""
import argparse, json, os, resource, time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image


def load_folder(root, size):
    """{split: (x float32 N x 3 x S x S in [0, 1], labels)} and the class names."""
    classes = sorted(d for d in os.listdir(os.path.join(root, "train")) if not d.startswith("."))
    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for c, name in enumerate(classes):
            d = os.path.join(root, split, name)
            for f in sorted(os.listdir(d)):
                if not f.lower().endswith((".png", ".jpg", ".jpeg")):
                    continue
                im = Image.open(os.path.join(d, f)).convert("RGB")
                if size and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                xs.append(np.asarray(im, dtype=np.uint8))
                ys.append(c)
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
        out[split] = (x, torch.tensor(ys, dtype=torch.int64))
    return out, classes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="image folder with train/ and test/")
    ap.add_argument("--synthetic", type=int, metavar="N", help="N random images instead of --data")
    ap.add_argument("--classes", type=int, default=5, help="with --synthetic")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--all-classes", action="store_true", help="train on every class, not task 1's")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    if a.synthetic:
        s = a.image_size or 32
        k = a.classes
        xtr = torch.randint(0, 256, (a.synthetic, 3, s, s), dtype=torch.uint8, generator=gen)
        xte = torch.randint(0, 256, (a.synthetic, 3, s, s), dtype=torch.uint8, generator=gen)
        ytr = torch.arange(a.synthetic) % k
        yte = torch.arange(a.synthetic) % k
    else:
        data, names = load_folder(a.data, a.image_size)
        (xtr, ytr), (xte, yte) = data["train"], data["test"]
        k = len(names)
        if not a.all_classes:
            keep = ytr < k // 2
            xtr, ytr = xtr[keep], ytr[keep]
    # Per-channel normalisation measured on the training images; the images
    # stay bytes, as the engine keeps them, and each batch is normalised as
    # it is taken (inside the timers, as the engine's `fill_batch` is).
    f = xtr.float() / 255.0
    mean = f.mean(dim=(0, 2, 3), keepdim=True)
    std = f.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    del f
    batch_of = lambda x: (x.float() / 255.0 - mean) / std

    model = torchvision.models.resnet18(num_classes=k)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)

    model.train()
    images = 0
    start = time.perf_counter()
    for _ in range(a.epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), a.batch):
            idx = order[i:i + a.batch]
            loss = F.cross_entropy(model(batch_of(xtr[idx])), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(idx)
    train_seconds = time.perf_counter() - start

    model.eval()
    correct = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(xte), a.batch):
            pred = model(batch_of(xte[i:i + a.batch])).argmax(1)
            correct += int((pred == yte[i:i + a.batch]).sum())
    eval_seconds = time.perf_counter() - start

    print(json.dumps({
        "backend": f"torch {torch.__version__} cpu",
        "arch": "resnet18",
        "threads": torch.get_num_threads(),
        "batch_size": a.batch,
        "image_size": int(xtr.shape[-1]),
        "train_images": images,
        "test_images": len(xte),
        "plain_epoch_images_per_second": images / train_seconds,
        "eval_images_per_second": len(xte) / eval_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "plain_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "final_loss": float(loss.detach()),
        "test_accuracy": correct / len(xte),
    }))


if __name__ == "__main__":
    main()
