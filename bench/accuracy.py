#!/usr/bin/python3
"""latentd's float32 moments against a float64 PyTorch reference, on the same
weights and image: the accuracy check for full-size models.

    build/release/bench/bench-encode --save-model /tmp/sd     # random full-size SD VAE
    build/release/latent-encode -q --moments -m /tmp/sd -o /tmp/ours.st IMAGE.png
    /usr/bin/python3 bench/accuracy.py /tmp/sd IMAGE.png /tmp/ours.st

Prints max |a - b| / (1 + |b|) over the moments (the fixtures' metric)."""
import json
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DTYPES = {"F32": np.float32, "F16": np.float16}


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, d in header.items():
        if name == "__metadata__":
            continue
        b, e = d["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=DTYPES[d["dtype"]]).reshape(d["shape"])
    return out


def encoder_f64(w, x, blocks, layers, groups=32):
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in w.items()}

    def conv(h, key, stride=1, pad=1):
        return F.conv2d(h, t[key + ".weight"], t[key + ".bias"], stride=stride, padding=pad)

    def norm(h, key):
        return F.group_norm(h, groups, t[key + ".weight"], t[key + ".bias"], eps=1e-6)

    def resnet(h, key):
        r = conv(F.silu(norm(h, key + ".norm1")), key + ".conv1")
        r = conv(F.silu(norm(r, key + ".norm2")), key + ".conv2")
        if key + ".conv_shortcut.weight" in t:
            h = conv(h, key + ".conv_shortcut", pad=0)
        return h + r

    def attention(h, key):
        n, c, hh, ww = h.shape
        s = norm(h, key + ".group_norm").view(n, c, hh * ww).transpose(1, 2)
        lin = lambda z, p: F.linear(z, t[f"{key}.{p}.weight"].view(c, c), t[f"{key}.{p}.bias"])
        q, k, v = lin(s, "to_q"), lin(s, "to_k"), lin(s, "to_v")
        a = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1)
        return h + lin(a @ v, "to_out.0").transpose(1, 2).view(n, c, hh, ww)

    h = conv(x, "encoder.conv_in")
    for i in range(len(blocks)):
        for j in range(layers):
            h = resnet(h, f"encoder.down_blocks.{i}.resnets.{j}")
        if i + 1 < len(blocks):
            h = conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down_blocks.{i}.downsamplers.0.conv",
                     stride=2, pad=0)
    h = resnet(h, "encoder.mid_block.resnets.0")
    h = attention(h, "encoder.mid_block.attentions.0")
    h = resnet(h, "encoder.mid_block.resnets.1")
    h = conv(F.silu(norm(h, "encoder.conv_norm_out")), "encoder.conv_out")
    return conv(h, "quant_conv", pad=0)


def main():
    model_dir, image_path, ours_path = sys.argv[1:4]
    cfg = json.load(open(f"{model_dir}/config.json"))
    w = load_safetensors(f"{model_dir}/diffusion_pytorch_model.safetensors")
    img = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float64) / 255.0
    x = torch.from_numpy(img).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        ref = encoder_f64(w, x, cfg["block_out_channels"], cfg["layers_per_block"]).numpy()
    ours = load_safetensors(ours_path)["moments"].astype(np.float64)
    err = np.max(np.abs(ours - ref) / (1 + np.abs(ref)))
    print(f"moments {ours.shape}: max |a-b|/(1+|b|) = {err:.3g} against float64")


if __name__ == "__main__":
    main()
