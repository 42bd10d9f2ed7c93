"""diffusers' remote VAE client, pointed at latentd.

remote_encode below does what diffusers.utils.remote_utils.remote_encode does
(prepare_encode, requests.post, postprocess_encode), with numpy standing in
for torch in the two places torch appears (the tensor's bytes, and
torch.frombuffer on the answer).  The test starts latentd on the fixture
model, calls it as a diffusers user would, and compares with the fixtures'
expected values (diffusers' own encode of the same pictures).

usage: remote_encode_client.py LATENTD_BINARY FIXTURES_DIR
"""
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile

import numpy as np
import requests
from PIL import Image

DTYPE_MAP = {"float16": np.float16, "float32": np.float32}


# ---- the client, as diffusers writes it ----

def prepare_encode(image, scaling_factor=None, shift_factor=None):
    headers = {}
    parameters = {}
    if scaling_factor is not None:
        parameters["scaling_factor"] = scaling_factor
    if shift_factor is not None:
        parameters["shift_factor"] = shift_factor
    if isinstance(image, np.ndarray):
        data = np.ascontiguousarray(image).tobytes()  # safetensors' _tobytes: raw LE
        parameters["shape"] = list(image.shape)
        parameters["dtype"] = str(image.dtype)
    else:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    return {"data": data, "params": parameters, "headers": headers}


def postprocess_encode(response):
    output_tensor = response.content
    parameters = response.headers
    shape = json.loads(parameters["shape"])
    dtype = parameters["dtype"]
    return np.frombuffer(bytearray(output_tensor), dtype=DTYPE_MAP[dtype]).reshape(shape)


def remote_encode(endpoint, image, scaling_factor=None, shift_factor=None):
    kwargs = prepare_encode(image=image, scaling_factor=scaling_factor,
                            shift_factor=shift_factor)
    response = requests.post(endpoint, **kwargs)
    if not response.ok:
        raise RuntimeError(response.json())
    return postprocess_encode(response=response)


# ---- the test ----

def read_safetensors(path, name):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    entry = header[name]
    assert entry["dtype"] == "F32", entry
    begin, end = entry["data_offsets"]
    return np.frombuffer(blob[8 + n + begin:8 + n + end], dtype="<f4").reshape(entry["shape"])


def start_latentd(binary, model, workdir):
    """Started as systemd would: READY=1 on a notify socket, then the port."""
    notify_path = os.path.join(workdir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(120)
    log = os.path.join(workdir, "latentd.log")
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen([binary, "--model", model, "--listen", "127.0.0.1:0",
                             "--log-file", log, "--threads", "1"], env=env)
    while b"READY=1" not in notify.recv(4096):
        pass
    notify.close()
    with open(log) as f:
        port = [int(line.split("listening on 127.0.0.1:")[1].split()[0])
                for line in f if "listening on 127.0.0.1:" in line][-1]
    return proc, port


def relative_error(got, want):
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def check(what, ok, detail=""):
    print(("PASS  " if ok else "FAIL  ") + what + (f" ({detail})" if detail else ""))
    return ok


def main():
    binary, fixtures = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="latentd-remote-") as workdir:
        proc, port = start_latentd(binary, os.path.join(fixtures, "models", "tiny-sd"), workdir)
        endpoint = f"http://127.0.0.1:{port}/v1/remote/encode"
        ok = True
        try:
            expected = os.path.join(fixtures, "expected", "tiny-sd")
            mean = read_safetensors(os.path.join(expected, "astronaut_64.safetensors"), "mean")
            latents = read_safetensors(os.path.join(expected, "astronaut_64.safetensors"),
                                       "latents")
            image = Image.open(os.path.join(fixtures, "images", "astronaut_64.png"))

            # a PIL image with SD1's factors, as the diffusers docs call it
            out = remote_encode(endpoint, image, scaling_factor=0.18215, shift_factor=0.0)
            err = relative_error(out, (mean - 0.0) * 0.18215)
            ok &= check("PIL image, scaling_factor and shift_factor: the scaled mode",
                        out.shape == mean.shape and err < 1e-4, f"shape {list(out.shape)}, "
                        f"relative error {err:.2e}")
            # FLUX-style factors: a shift as well
            out = remote_encode(endpoint, image, scaling_factor=0.3611, shift_factor=0.1159)
            err = relative_error(out, (mean - 0.1159) * 0.3611)
            ok &= check("shift_factor is subtracted before scaling", err < 1e-4,
                        f"relative error {err:.2e}")
            # no factors: the model's own scaling (its config), that is its latents
            out = remote_encode(endpoint, image)
            err = relative_error(out, latents)
            ok &= check("no factors: the model's own scaling", err < 1e-4,
                        f"relative error {err:.2e}")
            # a float tensor [1, 3, H, W] in [0, 1], as torch holds it
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            tensor = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
            out = remote_encode(endpoint, tensor, scaling_factor=0.18215)
            err = relative_error(out, mean * 0.18215)
            ok &= check("float32 tensor with shape and dtype parameters", err < 1e-4,
                        f"relative error {err:.2e}")
            # an error reaches the client as JSON through response.json()
            broken = tensor.copy()
            broken[0, 1, 2, 3] = np.nan
            try:
                remote_encode(endpoint, broken)
                ok &= check("a bad image raises RuntimeError with the daemon's JSON", False,
                            "no error")
            except RuntimeError as e:
                body = e.args[0]
                ok &= check("a bad image raises RuntimeError with the daemon's JSON",
                            isinstance(body, dict) and "[0, 1, 2, 3]" in str(body),
                            str(body)[:120])
        finally:
            proc.terminate()
            status = proc.wait(timeout=60)
            ok &= check("latentd exits 0 on SIGTERM", status == 0, f"status {status}")
    print("all passed" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
