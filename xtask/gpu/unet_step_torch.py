#!/usr/bin/env python3
"""The reference U-Net (shared/reference/unet_step_ref.py's network: DoubleConv widths w/2w/4w/8w,
bilinear x2, BCEWithLogits, Adam 1e-4) timed on a CUDA GPU (or `--device cpu`) in PyTorch eager
mode, for `cargo xtask gpu-check`. Prints one JSON line: median training-step seconds and forward seconds
per slice (batch `--batch`), after `--warmup` untimed steps."""
import argparse
import json
import statistics
import time

import torch


class DoubleConv(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.step = torch.nn.Sequential(
            torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(cout, cout, 3, padding=1), torch.nn.ReLU())

    def forward(self, x):
        return self.step(x)


class UNet(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.layer1 = DoubleConv(1, w)
        self.layer2 = DoubleConv(w, 2 * w)
        self.layer3 = DoubleConv(2 * w, 4 * w)
        self.layer4 = DoubleConv(4 * w, 8 * w)
        self.layer5 = DoubleConv(8 * w + 4 * w, 4 * w)
        self.layer6 = DoubleConv(4 * w + 2 * w, 2 * w)
        self.layer7 = DoubleConv(2 * w + w, w)
        self.layer8 = torch.nn.Conv2d(w, 1, 1)
        self.pool = torch.nn.MaxPool2d(2)
        self.up = torch.nn.Upsample(scale_factor=2, mode="bilinear")

    def forward(self, x):
        x1 = self.layer1(x)
        x2 = self.layer2(self.pool(x1))
        x3 = self.layer3(self.pool(x2))
        x4 = self.layer4(self.pool(x3))
        x5 = self.layer5(torch.cat([self.up(x4), x3], dim=1))
        x6 = self.layer6(torch.cat([self.up(x5), x2], dim=1))
        x7 = self.layer7(torch.cat([self.up(x6), x1], dim=1))
        return self.layer8(x7)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def synchronize():
        if cuda:
            torch.cuda.synchronize()
    torch.manual_seed(0)
    model = UNet(args.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    y = (torch.randn(args.batch, 1, args.size, args.size, device=device) > 1.0).float()

    def step():
        synchronize()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    steps = [step() for _ in range(args.steps)]
    model.eval()
    forwards = []
    with torch.inference_mode():
        for i in range(args.warmup + args.steps):
            synchronize()
            t0 = time.perf_counter()
            model(x)
            synchronize()
            if i >= args.warmup:
                forwards.append(time.perf_counter() - t0)
    print(json.dumps({
        "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "width": args.width, "size": args.size, "batch": args.batch,
        "step_s": statistics.median(steps), "fwd_s_per_slice": statistics.median(forwards) / args.batch,
    }))


if __name__ == "__main__":
    main()
