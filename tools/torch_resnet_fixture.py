#!/usr/bin/env python3
"""Write tests/fixtures/resnet20_torch.safetensors: a CIFAR ResNet-20 made
and run by PyTorch, for tests/torch_parity.rs to check that the engine's
ResNet computes what PyTorch computes.

Run by hand, in a virtualenv outside the repository with torch and
safetensors installed (`pip install torch safetensors`):

    python3 tools/torch_resnet_fixture.py tests/fixtures/resnet20_torch.safetensors

The network is the engine's `resnet20` layout: a 3×3 stem of 16 channels
without bias, BatchNorm, ReLU; three stages of three BasicBlocks (16, 32,
64 channels; the first block of stages 2 and 3 has stride 2 and a 1×1
convolution + BatchNorm projection named `downsample.0` / `downsample.1`);
global average pooling; `fc` to 5 classes. Tensor names are PyTorch's
state_dict names.

What the file holds:
- every state_dict tensor under its own name, taken after three SGD steps
  in training mode on random images (so weights, running statistics and
  num_batches_tracked are not at their initial values);
- `probe.x_eval` (4×3×16×16) and `probe.logits_eval`: the model's logits in
  eval mode (running statistics);
- `probe.x_train` (6×3×16×16), `probe.logits_train`: logits of one more
  forward pass in training mode (batch statistics), and
  `probe.after.<bn>.running_mean` / `.running_var`: every BatchNorm's running
  statistics after that pass (momentum 0.1, unbiased batch variance).
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


class Block(nn.Module):
    def __init__(self, c, oc, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c, oc, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(oc)
        self.conv2 = nn.Conv2d(oc, oc, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(oc)
        self.downsample = None
        if stride != 1 or c != oc:
            self.downsample = nn.Sequential(nn.Conv2d(c, oc, 1, stride, bias=False), nn.BatchNorm2d(oc))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(y + short)


class ResNet20(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, c = [], 16
        for i, width in enumerate([16, 32, 64]):
            blocks = [Block(c if j == 0 else width, width, 2 if i > 0 and j == 0 else 1) for j in range(3)]
            stages.append(nn.Sequential(*blocks))
            c = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def main(out):
    torch.manual_seed(0)
    net = ResNet20(5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _ in range(3):
        x = torch.rand(8, 3, 16, 16)
        loss = F.cross_entropy(net(x), torch.randint(0, 5, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tensors = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    x_eval, x_train = torch.rand(4, 3, 16, 16), torch.rand(6, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        tensors["probe.x_eval"] = x_eval
        tensors["probe.logits_eval"] = net(x_eval)
        net.train()
        tensors["probe.x_train"] = x_train
        tensors["probe.logits_train"] = net(x_train)
    for name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            tensors[f"probe.after.{name}.running_mean"] = m.running_mean.clone()
            tensors[f"probe.after.{name}.running_var"] = m.running_var.clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, out)


if __name__ == "__main__":
    main(sys.argv[1])
