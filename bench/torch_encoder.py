#!/usr/bin/env python3
"""The same encoder in PyTorch, for a baseline measured beside bench-encode.

The module mirrors diffusers' AutoencoderKL encoder (Encoder + quant_conv) for
the full-size SD VAE: block_out_channels 128,256,512,512, 2 layers per block,
GroupNorm(32, eps=1e-6), SiLU, (0,1,0,1)-padded stride-2 downsamples, one-head
mid attention.  diffusers itself is not needed: the arithmetic is the same.
Weights are PyTorch's default init (speed does not depend on them).

    python3 bench/torch_encoder.py [--size 512] [--batch 1] [--reps 3] [--threads 2]
"""
import argparse
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn


class Resnet(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=1e-6)
        self.q, self.k, self.v, self.out = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x):
        n, c, h, w = x.shape
        t = self.norm(x).view(n, c, h * w).transpose(1, 2)
        q, k, v = self.q(t), self.k(t), self.v(t)
        a = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1)
        return x + self.out(a @ v).transpose(1, 2).view(n, c, h, w)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    def __init__(self, blocks=(128, 256, 512, 512), layers=2, latent=4):
        super().__init__()
        mods = [nn.Conv2d(3, blocks[0], 3, padding=1)]
        cin = blocks[0]
        for i, c in enumerate(blocks):
            for j in range(layers):
                mods.append(Resnet(cin if j == 0 else c, c))
            if i + 1 < len(blocks):
                mods.append(Downsample(c))
            cin = c
        mods += [Resnet(cin, cin), Attention(cin), Resnet(cin, cin),
                 nn.GroupNorm(32, cin, eps=1e-6), nn.SiLU(),
                 nn.Conv2d(cin, 2 * latent, 3, padding=1), nn.Conv2d(2 * latent, 2 * latent, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x * 2 - 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        model(x)  # warm-up
        best, total = float("inf"), 0.0
        cpu0 = time.process_time()
        for _ in range(args.reps):
            t0 = time.perf_counter()
            model(x)
            t = time.perf_counter() - t0
            best, total = min(best, t), total + t
        cpu = time.process_time() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch        {torch.__version__}, {args.threads} threads")
    print(f"input        {args.batch} x {args.size}x{args.size}, {args.reps} reps")
    print(f"images/s     {args.batch / best:.4f} (best pass {best:.3f} s, mean {total / args.reps:.3f} s)")
    # CPU seconds per pass over all threads (as bench-encode prints them): with
    # one thread, what a pass takes on an idle machine, however busy this one is
    print(f"cpu time     {cpu / args.reps:.3f} s per pass, all threads "
          f"(images per CPU-second {args.batch * args.reps / cpu:.4f})")
    print(f"peak RSS     {rss:.1f} MiB")


if __name__ == "__main__":
    main()
