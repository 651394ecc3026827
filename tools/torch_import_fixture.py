#!/usr/bin/env python3
"""Write tests/fixtures/import/: a small classifier trained by PyTorch and
saved the way a user saves theirs, for the CLI test that `lwf-engine
import` followed by `predict --classifier heads` answers what PyTorch
answers on the same image files.

Run by hand, in a virtualenv outside the repository with torch, safetensors
and pillow installed:

    python3 tools/torch_import_fixture.py tests/fixtures/import

The network is the engine's `resnet20` layout (the class in
tools/torch_resnet_fixture.py), 32×32 colour input, `fc` to three classes
named `red`, `green`, `blue`. It is trained for 30 SGD steps (lr 0.01) in
training mode on synthetic images whose class is their dominant colour channel
(noise and a random square on top), so its weights, running statistics and
num_batches_tracked are those of a trained model, and its answers are
neither uniform nor saturated.

What the folder holds:
- `model.safetensors`: `save_file(model.state_dict(), ...)`, every tensor
  F32 under its PyTorch name (about 1.1 MB);
- `images/NN_<class>.png`: eight 32×32 RGB test images (fresh draws);
- `expected.json`: the normalisation used, the class names, and for each
  image file PyTorch's eval-mode softmax over the three classes, computed
  from the PNG files as read back from disk (pixels / 255, then
  `(x − mean) / std` per channel).
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_resnet_fixture import ResNet20  # noqa: E402

CLASSES = ["red", "green", "blue"]
MEAN = [0.4914, 0.4822, 0.4465]  # CIFAR-10's, as a user would pass them
STD = [0.2470, 0.2435, 0.2616]


def draw(gen, n):
    """n images (n × 32 × 32 × 3, uint8) and their classes: the class's
    channel is brighter on average; noise and a bright square of a random
    colour make it less than obvious."""
    labels = torch.randint(0, 3, (n,), generator=gen)
    x = torch.rand(n, 3, 32, 32, generator=gen) * 0.55
    for i in range(n):
        x[i, labels[i]] += 0.03
        r, c = torch.randint(0, 24, (2,), generator=gen).tolist()
        x[i, :, r : r + 8, c : c + 8] = torch.rand(3, 1, 1, generator=gen)
    img = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return img, labels


def normalise(img):
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def main(out):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = ResNet20(len(CLASSES))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    for _ in range(30):
        img, y = draw(gen, 32)
        loss = F.cross_entropy(net(normalise(img)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Settle the running statistics on the final weights (the last steps
    # moved them), as a user's long-trained model has them.
    with torch.no_grad():
        for _ in range(20):
            net(normalise(draw(gen, 64)[0]))
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, os.path.join(out, "model.safetensors"))

    img, y = draw(gen, 8)
    files = []
    for i in range(len(img)):
        name = f"images/{i:02}_{CLASSES[y[i]]}.png"
        Image.fromarray(img[i], "RGB").save(os.path.join(out, name))
        files.append(name)
    back = np.stack([np.asarray(Image.open(os.path.join(out, f)).convert("RGB")) for f in files])
    assert (back == img).all(), "PNG round trip changed pixels"
    net.eval()
    with torch.no_grad():
        probs = F.softmax(net(normalise(back)), dim=1)
    expected = {
        "classes": CLASSES,
        "norm_mean": MEAN,
        "norm_std": STD,
        "images": [{"file": f, "label": CLASSES[y[i]], "probabilities": probs[i].tolist()} for i, f in enumerate(files)],
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"accuracy on the 8 images {(probs.argmax(1) == y).float().mean():.3f}; max prob {probs.max():.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
