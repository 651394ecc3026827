#!/usr/bin/env python3
"""Write a 32×32 colour image folder made from the shipped Fashion-MNIST.

Each grey 28×28 item is padded by 2 pixels on every side to 32×32 and
coloured with two colours drawn for that image alone: a background colour
(pixel value 0) and a foreground colour (255), mixed linearly in between,
so `rgb = bg + (fg - bg) · v / 255`. The pair is redrawn until the two are
at least `MIN_CONTRAST` apart (Euclidean, 0-255 scale), so the garment stays
visible. The class is still the garment's shape; the colours carry no
information about it (they are independent of the label), so colour is a
nuisance a model has to learn to ignore.

The layout is the one `--data DIR` reads with its own split (README, "Your
own images"):

    DIR/train/<class>/00000.png …     DIR/test/<class>/00000.png …

with `<class>` the class ids as two-digit names (`00`, `01`, …), so their
sorted order is their id order. Training images come from the Fashion-MNIST
training files, test images from its test files: the first N of each class
in file order (with --validation, test images are the next N of each class in the
training files, so settings can be chosen without the test set). Colours come from `random.Random(seed)`, drawn in a fixed
order (all training images, then all test images), so the same arguments
give the same bytes.

    python3 tools/colour_folder.py OUT [--classes 0-4] [--train 600]
        [--test 200] [--seed 0] [--validation] [--source datasets/fashion-mnist]

`/work/colour5` (the ResNet benchmarks, benches/README.md) is
`python3 tools/colour_folder.py /work/colour5 --classes 0-4 --train 600 --test 200`.

Standard library only (gzip, struct, zlib, random); PNG written by hand:
8-bit RGB, filter type 0 on every row, one IDAT chunk.
"""
import argparse
import gzip
import os
import random
import struct
import sys
import zlib

SIZE = 32
PAD = 2
MIN_CONTRAST = 100.0


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    payload = data[4 + 4 * ndim :]
    count = 1
    for d in dims:
        count *= d
    if len(payload) != count:
        sys.exit(f"{path}: {len(payload)} bytes of data for dims {dims}")
    return dims, payload


def find(source, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(source, name)
        if os.path.exists(p):
            return p
    sys.exit(f"{source}: no {stem}(.gz)")


def chunk(kind, body):
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_rgb(width, height, rgb):
    """`rgb`: bytes of height rows × width pixels × 3."""
    rows = bytearray()
    stride = 3 * width
    for y in range(height):
        rows.append(0)
        rows += rgb[y * stride : (y + 1) * stride]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


def colours(rng):
    while True:
        bg = [rng.randrange(256) for _ in range(3)]
        fg = [rng.randrange(256) for _ in range(3)]
        if sum((a - b) ** 2 for a, b in zip(fg, bg)) >= MIN_CONTRAST**2:
            return bg, fg


def colourise(grey, side, rng):
    """One side×side grey item → SIZE×SIZE RGB bytes, padded with its background."""
    bg, fg = colours(rng)
    # The 256 possible grey values mapped once per image.
    lut = [
        bytes(round(b + (f - b) * v / 255) for b, f in zip(bg, fg)) for v in range(256)
    ]
    out = bytearray(lut[0] * (SIZE * SIZE))
    for y in range(side):
        row = grey[y * side : (y + 1) * side]
        start = 3 * ((y + PAD) * SIZE + PAD)
        out[start : start + 3 * side] = b"".join(lut[v] for v in row)
    return out


def parse_classes(spec):
    out = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    if not out or any(c < 0 or c > 9 for c in out) or len(set(out)) != len(out):
        sys.exit(f"--classes {spec}: want distinct ids 0-9")
    return sorted(out)


def write_split(out_dir, split, source, stem, classes, per_class, rng, skip=0):
    (n, h, w), images = read_idx(find(source, f"{stem}-images-idx3-ubyte"))
    (nl,), labels = read_idx(find(source, f"{stem}-labels-idx1-ubyte"))
    if nl != n or h != w or h + 2 * PAD != SIZE:
        sys.exit(f"{source}: unexpected {stem} shapes {n}x{h}x{w}, {nl} labels")
    picked = {c: [] for c in classes}
    seen = {c: 0 for c in classes}
    for i, label in enumerate(labels):
        if label in picked:
            seen[label] += 1
            if seen[label] > skip and len(picked[label]) < per_class:
                picked[label].append(i)
    for c in classes:
        if len(picked[c]) < per_class:
            sys.exit(f"{stem}: class {c} has only {len(picked[c])} images, {per_class} asked")
    for c in classes:
        d = os.path.join(out_dir, split, f"{c:02d}")
        os.makedirs(d, exist_ok=True)
        for j, i in enumerate(picked[c]):
            grey = images[i * h * w : (i + 1) * h * w]
            data = png_rgb(SIZE, SIZE, colourise(grey, h, rng))
            tmp = os.path.join(d, f".{j:05d}.png.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(d, f"{j:05d}.png"))
    return len(classes) * per_class


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--source", default=os.path.join(os.path.dirname(__file__), "..", "datasets", "fashion-mnist"))
    ap.add_argument("--classes", default="0-4")
    ap.add_argument("--train", type=int, default=600, help="training images per class")
    ap.add_argument("--test", type=int, default=200, help="test images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--validation",
        action="store_true",
        help="draw the test split from the training file too (the images of each class after the first "
        "--train), so settings can be chosen without looking at the test images",
    )
    a = ap.parse_args()
    if a.train < 1 or a.test < 1:
        sys.exit("--train and --test must be at least 1")
    classes = parse_classes(a.classes)
    for split in ("train", "test"):
        if os.path.exists(os.path.join(a.out, split)):
            sys.exit(f"{a.out}/{split} exists: choose a new folder")
    rng = random.Random(a.seed)
    ntr = write_split(a.out, "train", a.source, "train", classes, a.train, rng)
    if a.validation:
        nte = write_split(a.out, "test", a.source, "train", classes, a.test, rng, skip=a.train)
    else:
        nte = write_split(a.out, "test", a.source, "t10k", classes, a.test, rng)
    print(f"{a.out}: {ntr} training and {nte} test images, classes {classes}, 32x32 RGB, seed {a.seed}")


if __name__ == "__main__":
    main()
