#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into tests/fuzz/corpus/<name>/.

Run from anywhere, once, when a seed is to be added; the outputs are committed
(CI does not run this).  Seeds are small on purpose: libFuzzer mutates faster
on small inputs.  The JPEG seeds are not made here (Python has no JPEG
encoder): they are tests/fixtures/images/astronaut_64.jpg and variants of a
16x16 crop of it written with libjpeg (gray, progressive, 4:2:0 and 4:4:4,
restart markers, arithmetic coding, CMYK) plus its first 1500 bytes, kept in
corpus/jpeg/ as they are.
"""
import base64
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(TOP, "tests", "fixtures")


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def copy(target, src, name):
    with open(src, "rb") as f:
        out(target, name, f.read())


# ---------------- PNG ----------------

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def png(w, h, color, depth, interlace=False, extra=b"", plte=None, split_idat=False):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    bits = channels * depth

    def sample(x, y, c):
        return (x * 37 + y * 91 + c * 53) % (1 << depth)

    def row_bytes(xs, y):
        if depth >= 8:
            out = bytearray()
            for x in xs:
                for c in range(channels):
                    out += sample(x, y, c).to_bytes(depth // 8, "big")
            return bytes(out)
        acc, n, out = 0, 0, bytearray()
        for x in xs:
            acc = acc << depth | sample(x, y, 0)
            n += depth
            if n == 8:
                out.append(acc)
                acc, n = 0, 0
        if n:
            out.append(acc << (8 - n))
        return bytes(out)

    raw = bytearray()
    if interlace:
        for x0, y0, dx, dy in ADAM7:
            xs = list(range(x0, w, dx))
            if not xs:
                continue
            for y in range(y0, h, dy):
                raw += bytes([1 if y % 2 else 0]) + row_bytes(xs, y)  # Sub filter on odd rows
    else:
        for y in range(h):
            raw += bytes([y % 5]) + row_bytes(range(w), y)  # every filter type
    idat = zlib.compress(bytes(raw), 9)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 1 if interlace else 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
    if plte is not None:
        body += chunk(b"PLTE", plte)
    if split_idat:
        half = len(idat) // 2
        body += chunk(b"IDAT", idat[:half]) + chunk(b"IDAT", idat[half:])
    else:
        body += chunk(b"IDAT", idat)
    return body + chunk(b"IEND", b"")


def png_seeds():
    for depth in (1, 2, 4, 8, 16):
        out("png", "gray%d.png" % depth, png(5, 3, 0, depth))
    for depth in (1, 2, 4, 8):
        n = 1 << depth
        pal = bytes(v for i in range(n) for v in (i * 40 % 256, i * 90 % 256, i * 7 % 256))
        out("png", "palette%d.png" % depth, png(4, 4, 3, depth, plte=pal))
    for depth in (8, 16):
        out("png", "rgb%d.png" % depth, png(3, 2, 2, depth))
        out("png", "graya%d.png" % depth, png(2, 3, 4, depth))
        out("png", "rgba%d.png" % depth, png(3, 3, 6, depth))
    out("png", "rgb8-interlaced.png", png(9, 9, 2, 8, interlace=True))
    out("png", "gray2-interlaced.png", png(7, 5, 0, 2, interlace=True))
    ancillary = (chunk(b"gAMA", struct.pack(">I", 45455)) + chunk(b"sRGB", b"\x00") +
                 chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1)) +
                 chunk(b"sBIT", b"\x05\x06\x05") + chunk(b"tEXt", b"Title\x00seed") +
                 chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"compressed text")) +
                 chunk(b"iTXt", b"Author\x00\x00\x00en\x00\x00latentd") +
                 chunk(b"tIME", struct.pack(">HBBBBB", 2026, 11, 25, 3, 0, 0)) +
                 chunk(b"cHRM", struct.pack(">8I", *([31270, 32900] * 4))))
    out("png", "rgb8-ancillary.png", png(4, 4, 2, 8, extra=ancillary, split_idat=True))
    pal = bytes(range(12))
    out("png", "palette-no-iend.png", png(2, 2, 3, 8, plte=pal)[:-12])  # truncated
    plain = png(2, 2, 3, 2, plte=pal)
    i = plain.index(b"IDAT") - 4  # tRNS goes between PLTE and IDAT
    out("png", "palette2-trns.png", plain[:i] + chunk(b"tRNS", b"\x00\x80") + plain[i:])
    for name in ("astronaut_64_palette.png", "astronaut_64_gray.png", "chelsea_60x44.png"):
        copy("png", os.path.join(FIXTURES, "images", name), name)
    # EXIF orientation 6 (big-endian TIFF, as Pillow writes it) in an eXIf chunk
    # before the image data, and little-endian orientation 8 in one after it
    exif6 = bytes.fromhex("4d4d002a00000008000101120003000000010006000000000000")
    exif8 = bytes.fromhex("49492a0008000000010012010300010000000800000000000000")
    plain = png(3, 2, 2, 8)
    i, j = plain.index(b"IDAT") - 4, plain.index(b"IEND") - 4
    out("png", "rgb8-exif6.png", plain[:i] + chunk(b"eXIf", exif6) + plain[i:])
    out("png", "rgb8-exif8-after-idat.png", plain[:j] + chunk(b"eXIf", exif8) + plain[j:])


def webp_seeds():
    # the other WebP seeds came with the target
    for n in (5, 6):
        copy("webp", os.path.join(FIXTURES, "images", "orientation", "webp", "exif_%d.webp" % n),
             "exif_%d.webp" % n)


# ---------------- safetensors ----------------

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "BOOL": 1, "F8_E4M3": 1}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape); data is a byte pattern."""
    header, data = {}, bytearray()
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = DTYPE_SIZE[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        # small finite values in every float format: 0x3c00 is 1.0 in F16, 0x3f80 in BF16
        data += bytes((i * 7) % 64 for i in range(n))
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data)


def conv(name, o, i, k, dt):
    return [(name + ".weight", dt, [o, i, k, k]), (name + ".bias", dt, [o])]


def norm(name, c, dt):
    return [(name + ".weight", dt, [c]), (name + ".bias", dt, [c])]


def resnet(name, c, dt):
    return (norm(name + ".norm1", c, dt) + conv(name + ".conv1", c, c, 3, dt) +
            norm(name + ".norm2", c, dt) + conv(name + ".conv2", c, c, 3, dt))


def tiny_diffusers(dt):
    """The smallest model ld_config_infer accepts: 32 channels, one level, one latent
    channel, mid attention under the pre-0.14 diffusers names, no quant_conv."""
    c, p = 32, "encoder."
    t = conv(p + "conv_in", c, 3, 3, dt) + resnet(p + "down_blocks.0.resnets.0", c, dt)
    t += resnet(p + "mid_block.resnets.0", c, dt)
    t += norm(p + "mid_block.attentions.0.group_norm", c, dt)
    for part in ("query", "key", "value", "proj_attn"):
        t += [(p + "mid_block.attentions.0.%s.weight" % part, dt, [c, c]),
              (p + "mid_block.attentions.0.%s.bias" % part, dt, [c])]
    t += resnet(p + "mid_block.resnets.1", c, dt)
    t += norm(p + "conv_norm_out", c, dt) + conv(p + "conv_out", 2, c, 3, dt)
    return t


def tiny_ldm(dt, prefix):
    """The same in the original LDM names under a prefix, with quant_conv and
    1x1-conv attention projections, plus a tensor that is not the VAE's."""
    c, p = 32, prefix + "encoder."
    t = conv(p + "conv_in", c, 3, 3, dt) + resnet(p + "down.0.block.0", c, dt)
    t += resnet(p + "mid.block_1", c, dt) + norm(p + "mid.attn_1.norm", c, dt)
    for part in ("q", "k", "v", "proj_out"):
        t += conv(p + "mid.attn_1." + part, c, c, 1, dt)
    t += resnet(p + "mid.block_2", c, dt)
    t += norm(p + "norm_out", c, dt) + conv(p + "conv_out", 4, c, 3, dt)
    t += conv(prefix + "quant_conv", 4, 4, 1, dt)
    t += [("cond_stage_model.position_ids", "I64", [1, 7]), ("model_ema.num_updates", "I32", [])]
    return t


def safetensors_seeds():
    out("safetensors", "one-f32", safetensors([("a", "F32", [2])]))
    out("safetensors", "dtypes", safetensors(
        [("f16", "F16", [3, 1]), ("bf16", "BF16", [2, 2]), ("f64", "F64", [1]),
         ("i64", "I64", [2]), ("b", "BOOL", [3]), ("scalar", "I32", []),
         ("empty", "F32", [0, 4]), ("fp8", "F8_E4M3", [2])],
        metadata={"format": "pt", "note": "seed"}))
    out("safetensors", "unpadded", safetensors([("x.weight", "F32", [1, 1, 1, 1])], pad=False))
    out("safetensors", "empty-header", struct.pack("<Q", 2) + b"{}")
    out("safetensors", "tiny-diffusers-f16", safetensors(tiny_diffusers("F16")))
    out("safetensors", "tiny-ldm-prefixed-bf16",
        safetensors(tiny_ldm("BF16", "first_stage_model."), metadata={"format": "pt"}))


# ---------------- tensors ----------------

def npy(dict_text, floats):
    """An npy 1.0 file as numpy pads it: the header to a multiple of 64."""
    h = dict_text.encode()
    total = (10 + len(h) + 1 + 63) // 64 * 64
    h += b" " * (total - 10 - len(h) - 1) + b"\n"
    return (b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h +
            struct.pack("<%df" % len(floats), *floats))


def tensor_seeds():
    # the first byte picks fuzz_tensor.c's container: 0 is npy.  A key given
    # twice is refused (numpy would keep the last); the other tensor seeds
    # came with the target
    out("tensor", "npy_shape_twice", b"\x00" + npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), 'shape': (1, 3, 4, 1), }",
        [i / 16 for i in range(12)]))


# ---------------- config.json ----------------

def config_seeds():
    models = os.path.join(FIXTURES, "models")
    for m in sorted(os.listdir(models)):
        src = os.path.join(models, m, "config.json")
        if os.path.exists(src):
            copy("config", src, m + ".json")
    out("config", "minimal.json", '{"block_out_channels":[32]}')
    out("config", "all-keys.json", json.dumps({
        "_class_name": "AutoencoderKL", "in_channels": 3, "block_out_channels": [8, 16],
        "layers_per_block": 2, "latent_channels": 2, "norm_num_groups": 8,
        "use_quant_conv": False, "mid_block_add_attention": True, "scaling_factor": 0.5,
        "shift_factor": -0.25, "latents_mean": [0.1, -0.2], "latents_std": [1.5, 2e-3]}))
    out("config", "wrong-class.json", '{"_class_name":"VQModel","block_out_channels":[32]}')
    out("config", "nulls.json", '{"block_out_channels":[64,64],"in_channels":null,'
        '"scaling_factor":null,"latents_mean":null,"latents_std":[1]}')


# ---------------- JSON requests, query strings, base64 ----------------

def request_seeds():
    tiny = base64.b64encode(png(2, 2, 2, 8)).decode()
    out("json", "image.json", json.dumps({"image": tiny}))
    out("json", "images-options.json", json.dumps({
        "images": [tiny, "data:image/png;base64," + tiny], "outputs": ["latents", "moments"],
        "seed": 42, "deterministic": False, "center_input_sample": True, "format": "npy",
        "tensor_encoding": "list"}))
    out("json", "outputs-string.json", json.dumps({"image": "QUJD", "outputs": "mean, logvar",
                                                   "format": "safetensors", "seed": None}))
    out("json", "wrapped-base64.json", json.dumps({"image": tiny[:20] + "\n" + tiny[20:]}))
    out("json", "bad-field.json", '{"images":"notalist","colour":1}')
    out("query", "seed", "seed=1234&deterministic=false")
    out("query", "outputs", "outputs=latents,mean,logvar,moments&format=safetensors")
    out("query", "encoding", "tensor_encoding=list&center_input_sample=0&format=npy")
    out("query", "bools", "deterministic=YES&center_input_sample=no&deterministic=1")
    out("query", "bad", "outputs=&seed=-1&unknown=x&format")
    out("base64", "hello", "aGVsbG8gd29ybGQ=")
    out("base64", "padded", "QQ==")
    out("base64", "unpadded", "QUJDRA")
    out("base64", "spaces", "QUJD\r\nREVG\tR0g=\n")
    out("base64", "bad", "QUJD*REVG")
    out("base64", "png", base64.b64encode(png(1, 1, 0, 8)).decode())
    out("base64", "bytes", bytes(range(256)))


# ---------------- whole HTTP requests ----------------

KEY = "X-API-Key: fuzz-key-0123456789\r\n"  # fuzz_http.c's daemon wants it


def fixture(name):
    with open(os.path.join(FIXTURES, "images", name), "rb") as f:
        return f.read()


def request(target, body=b"", method="POST", headers="", length=True, key=True):
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (KEY if key else "") + headers
    if length and (body or method == "POST"):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def chunked(body, size=700):
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def form(parts, boundary="bb"):
    """parts: (name or None, filename or None, content type or None, bytes)"""
    out_ = b""
    for name, filename, ctype, data in parts:
        out_ += b"--" + boundary.encode() + b"\r\n"
        if name is not None:
            disp = f'Content-Disposition: form-data; name="{name}"'
            if filename:
                disp += f'; filename="{filename}"'
            out_ += disp.encode() + b"\r\n"
        if ctype:
            out_ += f"Content-Type: {ctype}\r\n".encode()
        out_ += b"\r\n" + data + b"\r\n"
    return out_ + b"--" + boundary.encode() + b"--\r\n"


def http_seeds():
    small = png(8, 8, 2, 8)  # the model takes sides that are multiples of 8
    gray = fixture("astronaut_64_gray.png")
    jpeg = fixture("astronaut_64.jpg")
    enc = "/v1/encode"
    mp = "Content-Type: multipart/form-data; boundary=bb\r\n"
    js = "Content-Type: application/json\r\n"
    png_type = "Content-Type: image/png\r\n"
    # the GET endpoints
    out("http", "get-healthz", request("/healthz", method="GET", key=False))
    out("http", "get-model", request("/v1/model", method="GET"))
    out("http", "get-metrics-readyz-pipelined",
        request("/metrics", method="GET", key=False) + request("/readyz", method="GET", key=False))
    out("http", "head-healthz-http10", b"HEAD /healthz HTTP/1.0\r\n\r\n")
    # each kind of body
    out("http", "multipart-png-fields", request(enc, form([
        ("image", "a.png", "image/png", small), ("outputs", None, None, b"mean"),
        ("format", None, None, b"npy")]), headers=mp))
    out("http", "multipart-jpeg-two-images", request(enc, form([
        ("images[]", "a.jpg", "image/jpeg", jpeg), ("images[]", None, None, small),
        ("seed", None, None, b"7"), ("tensor_encoding", None, None, b"list")],
        boundary="----x7MA4YWxkTrZu0gW"),
        headers="Content-Type: multipart/form-data; boundary=----x7MA4YWxkTrZu0gW\r\n"))
    out("http", "json-images", request(enc, json.dumps({
        "images": [base64.b64encode(small).decode()], "outputs": ["latents", "moments"],
        "format": "json", "deterministic": True}).encode(), headers=js))
    out("http", "json-data-url-gray", request(enc, json.dumps({
        "image": "data:image/png;base64," + base64.b64encode(gray).decode()}).encode(),
        headers=js))
    out("http", "raw-png", request(enc, small, headers=png_type))
    out("http", "raw-jpeg-octet-stream",
        request(enc, jpeg, headers="Content-Type: application/octet-stream\r\n"))
    out("http", "raw-png-query-options", request(
        enc + "?format=safetensors&seed=18446744073709551615&outputs=mean,logvar&center_input_sample=1",
        small, headers=png_type))
    out("http", "raw-png-accept-npy", request(enc, small, headers=png_type + "Accept: application/x-npy\r\n"))
    out("http", "chunked-multipart", request(enc, chunked(form([("image", "a.png", None, small),
                                                                  ("format", None, None, b"json")])),
        headers=mp + "Transfer-Encoding: chunked\r\n", length=False))
    out("http", "chunked-json", request(enc, chunked(json.dumps(
        {"images": [base64.b64encode(small).decode()] * 2}).encode(), size=100),
        headers=js + "Transfer-Encoding: chunked\r\n", length=False))
    out("http", "expect-continue-bearer", request(enc, small, key=False,
        headers=png_type + "Expect: 100-continue\r\nAuthorization: Bearer fuzz-key-0123456789\r\n"))
    out("http", "keep-alive-two-requests",
        request(enc, small, headers=png_type + "Connection: keep-alive\r\n") +
        request("/healthz", method="GET", headers="Connection: close\r\n"))
    # refused ones
    out("http", "no-api-key", request(enc, small, headers=png_type, key=False))
    out("http", "multipart-part-without-name",
        request(enc, b"--bb\r\n\r\nx\r\n--bb--\r\n", headers=mp))
    out("http", "content-length-twice-differ",
        request(enc, small, headers=png_type + "Content-Length: 5\r\n"))
    out("http", "content-length-and-chunked", request(enc, chunked(small),
        headers=png_type + "Content-Length: 10\r\nTransfer-Encoding: chunked\r\n", length=False))
    out("http", "transfer-encoding-gzip", request(enc, small,
        headers=png_type + "Transfer-Encoding: gzip\r\n", length=False))
    out("http", "content-type-pngx", request(enc, small, headers="Content-Type: image/pngx\r\n"))
    out("http", "query-bad-percent", request(enc + "?%ff=1", small, headers=png_type))
    out("http", "path-with-newline", request("/v1/en%0acode", small, headers=png_type))
    out("http", "body-too-large", request(enc, b"", headers=png_type + "Content-Length: 2000000\r\n",
                                          length=False))
    out("http", "json-no-image", request(enc, b'{"outputs":"mean"}', headers=js))
    out("http", "multipart-truncated", request(enc, form([("image", "a.png", None, small)])[:-20],
                                               headers=mp))
    out("http", "method-delete", request(enc, method="DELETE"))
    out("http", "bad-request-line", b"GET  /healthz HTTP/1.1\r\n\r\n")


if __name__ == "__main__":
    png_seeds()
    webp_seeds()
    safetensors_seeds()
    tensor_seeds()
    config_seeds()
    request_seeds()
    http_seeds()
