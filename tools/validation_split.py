#!/usr/bin/env python3
"""Write a validation copy of Fashion-MNIST made from its *training* images only.

The held-out part (a seeded, stratified fraction of each class's training
images, default 10 %) becomes the copy's "test" split, the rest its "train"
split, as NPY files that `lwf-engine --data DIR` reads. Settings such as the
default drift-compensation sigma are chosen by running experiments on this
copy, so the real test set is never looked at while choosing them.

    python3 tools/validation_split.py datasets/fashion-mnist /tmp/fmnist-val

Standard library only (gzip, struct, random).
"""
import gzip
import os
import random
import shutil
import struct
import sys


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def write_npy(path, shape, payload):
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (%s), }" % (
        ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    )
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(payload)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    fraction = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    (n, h, w), pixels = read_idx(os.path.join(src, "train-images-idx3-ubyte.gz"))
    (_,), labels = read_idx(os.path.join(src, "train-labels-idx1-ubyte.gz"))
    rng = random.Random(seed)
    by_class = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    held = set()
    for c in sorted(by_class):
        idx = by_class[c]
        held.update(rng.sample(idx, round(fraction * len(idx))))
    os.makedirs(out, exist_ok=True)
    size = h * w
    for name, keep in [("train", [i for i in range(n) if i not in held]), ("test", sorted(held))]:
        write_npy(os.path.join(out, f"{name}_images.npy"), (len(keep), h, w),
                  b"".join(pixels[i * size : (i + 1) * size] for i in keep))
        write_npy(os.path.join(out, f"{name}_labels.npy"), (len(keep),), bytes(labels[i] for i in keep))
    shutil.copy(os.path.join(src, "classes.txt"), os.path.join(out, "classes.txt"))
    print(f"{out}: {n - len(held)} train, {len(held)} validation images (fraction {fraction}, seed {seed})")


if __name__ == "__main__":
    main()
