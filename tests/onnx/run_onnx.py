"""Check and run exported lwf-engine ONNX models with ONNX Runtime.

    python run_onnx.py IMAGES OUT.json MODEL.onnx [MODEL.onnx ...] [--limit N]

IMAGES is an IDX file (optionally .gz) of u8 images, N x H x W, or an .npy
of N x H x W or N x C x H x W (u8, or f32 in [0, 1]). Each model is first
checked by onnx.checker (full check: shape inference included), then run on
the first N images; OUT.json maps each model's path to its probabilities,
its features' shape, its input and output names and its metadata. One
process for many models, because importing onnxruntime is the slow part.
Used by tests/onnx.rs; needs onnx, onnxruntime and numpy.
"""
import argparse
import gzip
import json

import numpy as np
import onnx
import onnxruntime as ort


def read_images(path, limit):
    if path.endswith(".npy"):
        x = np.load(path)
    else:
        raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
        n, h, w = (int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
        x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)
    if x.ndim == 3:
        x = x[:, None]
    x = x[:limit]
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    return np.ascontiguousarray(x, dtype=np.float32)


def run(model, x):
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    probs, feats = sess.run(["probabilities", "features"], {"images": x})
    return {
        "probabilities": probs.tolist(),
        "features_shape": list(feats.shape),
        "inputs": [i.name for i in sess.get_inputs()],
        "outputs": [o.name for o in sess.get_outputs()],
        "metadata": sess.get_modelmeta().custom_metadata_map,
        "opset": [o.version for o in onnx.load(model).opset_import if o.domain in ("", "ai.onnx")],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("out")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--limit", type=int, default=500)
    a = ap.parse_args()
    x = read_images(a.images, a.limit)
    report = {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "models": {}}
    for m in a.models:
        report["models"][m] = run(m, x)
    with open(a.out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
