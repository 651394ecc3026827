#!/usr/bin/env python3
"""Write an NPY data directory with the first N training images (in a seeded
random order) of each chosen class of an IDX data directory, and its full
test split; classes.txt is copied. Used to measure `extend` with more images
of known classes (README, "More images of classes the model knows").

usage: subset_npy.py SRC_DIR DST_DIR --classes 0-4 --per-class 300 [--seed 0]
Needs numpy.
"""
import argparse
import gzip
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colour_folder import parse_classes  # noqa: E402  (one parser of --classes for the tools)


def read_idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--classes", required=True)
    ap.add_argument("--per-class", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    x = read_idx(os.path.join(a.src, "train-images-idx3-ubyte.gz"), 16).reshape(-1, 28, 28)
    y = read_idx(os.path.join(a.src, "train-labels-idx1-ubyte.gz"), 8)
    xt = read_idx(os.path.join(a.src, "t10k-images-idx3-ubyte.gz"), 16).reshape(-1, 28, 28)
    yt = read_idx(os.path.join(a.src, "t10k-labels-idx1-ubyte.gz"), 8)
    rng = np.random.default_rng(a.seed)
    keep = np.sort(
        np.concatenate([rng.permutation(np.where(y == c)[0])[: a.per_class] for c in parse_classes(a.classes)])
    )
    os.makedirs(a.dst, exist_ok=True)
    np.save(os.path.join(a.dst, "train_images.npy"), x[keep])
    np.save(os.path.join(a.dst, "train_labels.npy"), y[keep].astype(np.int64))
    np.save(os.path.join(a.dst, "test_images.npy"), xt)
    np.save(os.path.join(a.dst, "test_labels.npy"), yt.astype(np.int64))
    shutil.copy(os.path.join(a.src, "classes.txt"), a.dst)
    print(f"{len(keep)} training images of classes {a.classes} -> {a.dst}")


if __name__ == "__main__":
    main()
