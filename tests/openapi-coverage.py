"""Every route and status code openapi.yaml documents, provoked from the real daemon.

The test reads openapi.yaml, lists every (path, method, status) it documents,
and runs the recipe below that provokes that status from a latentd it started
(three of them, with the settings the statuses need).  Each answer must have
the documented status, a documented Content-Type, the documented headers
(Retry-After on 503, shape and dtype on /v1/remote/encode's 200) and, for an
error, the error code the recipe aims at.  It fails when a documented status
has no recipe or its recipe gets something else, and when a recipe provokes a
status openapi.yaml does not document: document and recipes stay in step.

usage: openapi-coverage.py LATENTD_BINARY FIXTURES_DIR OPENAPI_YAML
"""
import base64
import json
import os
import signal
import socket
import subprocess
import struct
import sys
import tempfile
import time

import yaml

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
API_KEY = "openapi-coverage-key"
# time limits stretch like the C tests' when everything runs slower (valgrind)
SCALE = max(1.0, float(os.environ.get("LATENTD_TEST_TIME_SCALE", "1") or 1))


# ---- talking HTTP by hand: framing the daemon must refuse needs raw bytes ----

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value
        self.body = body

    def media_type(self):
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def error_code(self):
        try:
            return json.loads(self.body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def read_response(sock):
    """The whole answer: every request says Connection: close, so up to EOF."""
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break  # an answer sent before the body, then a reset: what came is it
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        raise RuntimeError(f"no HTTP answer: {data[:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return Response(int(lines[0].split()[1]), headers, body)


def request(port, method, target, headers=(), body=b"", send_body=True):
    """One request on a new connection.  headers: (name, value) pairs, sent as
    given; Content-Length is added for a body unless the pairs frame it.
    send_body=False sends the headers alone (an answer from the headers)."""
    headers = list(headers)
    names = {name.lower() for name, _ in headers}
    if body and not names & {"content-length", "transfer-encoding"}:
        headers.append(("Content-Length", str(len(body))))
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60 * SCALE) as sock:
        try:
            sock.sendall(head.encode("latin-1") + (body if send_body else b""))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused from its headers and closed: the answer is waiting
        return read_response(sock)


# ---- the daemon, started as systemd would start it ----

class Daemon:
    def __init__(self, name, binary, model, workdir, flags):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.mkdir(self.dir)
        notify_path = os.path.join(self.dir, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        self.log = os.path.join(self.dir, "latentd.log")
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        self.proc = subprocess.Popen([binary, "--model", model, "--listen", "127.0.0.1:0",
                                      "--log-file", self.log, "--threads", "1"] + flags,
                                     env=env)
        # READY=1 comes once the model is loaded and the port is open; a
        # daemon that dies instead is noticed between short waits
        deadline = time.monotonic() + 120 * SCALE
        notify.settimeout(0.5)
        try:
            while True:
                try:
                    if b"READY=1" in notify.recv(4096):
                        break
                except socket.timeout:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"latentd ({name}) did not start; see {self.log}:\n"
                                       + open(self.log).read()[-2000:])
        finally:
            notify.close()
        with open(self.log) as f:
            ports = [int(line.split("listening on 127.0.0.1:")[1].split()[0])
                     for line in f if "listening on 127.0.0.1:" in line]
        self.port = ports[-1]

    def metric(self, name):
        for line in request(self.port, "GET", "/metrics").body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def wait_for_metric(self, name, value, seconds=30):
        """Polls /metrics until the gauge reads value: the daemon's own word
        that a state was reached, never a guess at how long it takes."""
        deadline = time.monotonic() + seconds * SCALE
        while time.monotonic() < deadline:
            if self.metric(name) == value:
                return True
            time.sleep(0.02)
        return False

    def stop(self):
        """SIGTERM, as systemd stops it; the exit status (0 = a clean drain)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60 * SCALE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "hung"


# ---- the recipes: (path, METHOD, status) -> how to provoke it ----

class Fixtures:
    def __init__(self, directory):
        def read(name):
            with open(os.path.join(directory, "images", name), "rb") as f:
                return f.read()
        self.png = read("astronaut_64.png")
        self.other_png = read("coffee_96x128.png")  # another size than png


def key_header():
    return [("X-API-Key", API_KEY)]


RAW_4x4 = b"\0" * (3 * 4 * 4 * 4)  # a float32 tensor [1, 3, 4, 4]: under the model's 8x8
TINY = "shape=1,3,4,4&dtype=float32"


def recipes(fx):
    """Each: (path, method, status, daemon, what it does, expected error code
    or None, a function of the daemon giving the Response).  A status with
    several documented media types has a recipe for each.  Operations that
    openapi.yaml marks `security: []` get their 200 from the keyed daemon
    without a key: open, as documented."""
    png = [("Content-Type", "image/png")]
    json_body = json.dumps({"images": [base64.b64encode(fx.png).decode()],
                            "outputs": ["latents"]}).encode()
    mixed_npy = json.dumps({"images": [base64.b64encode(fx.png).decode(),
                                       base64.b64encode(fx.other_png).decode()],
                            "format": "npy"}).encode()
    ctype_json = [("Content-Type", "application/json")]

    def post(path, headers, body=b"", send_body=True):
        return lambda d: request(d.port, "POST", path, headers, body, send_body)

    def get(path, headers=(), body=b""):
        return lambda d: request(d.port, "GET", path, headers, body)

    # no body follows: a Transfer-Encoding other than chunked is refused at the headers
    gzip = [("Content-Type", "image/png"), ("Transfer-Encoding", "gzip")]
    big = [("Content-Length", "1000000")]
    return [
        # /v1/encode
        ("/v1/encode", "POST", 200, "main", "JSON, one PNG", None,
         post("/v1/encode", ctype_json, json_body)),
        # one recipe per media type the 200 documents
        ("/v1/encode", "POST", 200, "main", "PNG, format=safetensors", None,
         post("/v1/encode?format=safetensors", png, fx.png)),
        ("/v1/encode", "POST", 200, "main", "PNG, Accept: npy", None,
         post("/v1/encode", png + [("Accept", "application/x-npy")], fx.png)),
        ("/v1/encode", "POST", 200, "main", "PNG, format=png", None,
         post("/v1/encode?format=png", png, fx.png)),
        ("/v1/encode", "POST", 200, "main", "JSON, model=sdxl (the second model)", None,
         post("/v1/encode?model=sdxl", ctype_json, json_body)),
        ("/v1/encode", "POST", 404, "main", "model=sd3: not served", "unknown-model",
         post("/v1/encode?model=sd3", png, fx.png)),
        ("/v1/encode", "POST", 400, "main", "a PNG that is not one", "bad-image",
         post("/v1/encode", png, b"not a picture at all")),
        ("/v1/encode", "POST", 401, "keyed", "no API key", "unauthorized",
         post("/v1/encode", png, fx.png)),
        ("/v1/encode", "POST", 413, "keyed", "Content-Length past max_body_bytes",
         "body-too-large", post("/v1/encode", key_header() + png + big, send_body=False)),
        ("/v1/encode", "POST", 415, "main", "Content-Type: text/plain",
         "unsupported-media-type",
         post("/v1/encode", [("Content-Type", "text/plain")], fx.png)),
        ("/v1/encode", "POST", 422, "main", "format=npy, two sizes", "format-unsuitable",
         post("/v1/encode", ctype_json, mixed_npy)),
        ("/v1/encode", "POST", 501, "main", "Transfer-Encoding: gzip", "not-implemented",
         post("/v1/encode", gzip, send_body=False)),
        ("/v1/encode", "POST", 503, "full", "the queue is full", "queue-full",
         post("/v1/encode", png, fx.png)),
        ("/v1/encode", "POST", 504, "keyed", "past request_timeout_ms", "timeout",
         post("/v1/encode", key_header() + png, fx.png)),
        # /v1/remote/encode: diffusers' client sends no Content-Type
        ("/v1/remote/encode", "POST", 200, "main", "PNG bytes, no Content-Type", None,
         post("/v1/remote/encode", [], fx.png)),
        ("/v1/remote/encode", "POST", 404, "main", "model=sd3: not served", "unknown-model",
         post("/v1/remote/encode?model=sd3", [], fx.png)),
        ("/v1/remote/encode", "POST", 400, "main", "bytes that are no picture", "bad-image",
         post("/v1/remote/encode", [], b"not a picture at all")),
        ("/v1/remote/encode", "POST", 401, "keyed", "no API key", "unauthorized",
         post("/v1/remote/encode", [], fx.png)),
        ("/v1/remote/encode", "POST", 413, "keyed", "Content-Length past max_body_bytes",
         "body-too-large", post("/v1/remote/encode", key_header() + big, send_body=False)),
        ("/v1/remote/encode", "POST", 415, "main", "Content-Type: text/plain",
         "unsupported-media-type",
         post("/v1/remote/encode", [("Content-Type", "text/plain")], fx.png)),
        ("/v1/remote/encode", "POST", 422, "main", "a 4x4 tensor", "bad-image-size",
         post("/v1/remote/encode?" + TINY, [("Content-Type", "application/octet-stream")],
              RAW_4x4)),
        ("/v1/remote/encode", "POST", 501, "main", "Transfer-Encoding: gzip",
         "not-implemented", post("/v1/remote/encode", gzip, send_body=False)),
        ("/v1/remote/encode", "POST", 503, "full", "the queue is full", "queue-full",
         post("/v1/remote/encode", [], fx.png)),
        ("/v1/remote/encode", "POST", 504, "keyed", "past request_timeout_ms", "timeout",
         post("/v1/remote/encode", key_header(), fx.png)),
        # probes, metrics and the model
        ("/healthz", "GET", 200, "keyed", "no key: open", None, get("/healthz")),
        ("/v2/health/live", "GET", 200, "keyed", "no key: open", None, get("/v2/health/live")),
        ("/readyz", "GET", 200, "keyed", "no key: open", None, get("/readyz")),
        ("/readyz", "GET", 503, "full", "the queue is full", "not-ready", get("/readyz")),
        ("/v2/health/ready", "GET", 200, "keyed", "no key: open", None,
         get("/v2/health/ready")),
        ("/v2/health/ready", "GET", 503, "full", "the queue is full", "not-ready",
         get("/v2/health/ready")),
        ("/metrics", "GET", 200, "keyed", "no key: open", None, get("/metrics")),
        ("/v1/model", "GET", 200, "keyed", "with the key", None,
         get("/v1/model", key_header())),
        ("/v1/model", "GET", 401, "keyed", "no API key", "unauthorized", get("/v1/model")),
        ("/v1/model", "GET", 404, "keyed", "model=sd3: not served", "unknown-model",
         get("/v1/model?model=sd3", key_header())),
        ("/v1/models", "GET", 200, "keyed", "with the key", None,
         get("/v1/models", key_header())),
        ("/v1/models", "GET", 401, "keyed", "no API key", "unauthorized", get("/v1/models")),
    ] + [(path, "GET", 400, "keyed", "a body: nothing reads it", "bad-request",
          get(path, key_header(), b"x" * 100))
         for path in ("/healthz", "/v2/health/live", "/readyz", "/v2/health/ready", "/metrics",
                      "/v1/model", "/v1/models")]


# ---- what openapi.yaml says ----

def resolve(spec, node):
    while isinstance(node, dict) and "$ref" in node:
        target = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def documented(spec):
    """(path, METHOD, status) -> (the response object, the operation)."""
    out = {}
    for path, item in spec["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            for status, response in operation.get("responses", {}).items():
                out[(path, method.upper(), str(status))] = (resolve(spec, response), operation)
    return out


def check_against(spec, response_doc, operation, expect_code, got):
    """What in the answer disagrees with the document (empty: nothing)."""
    problems = []
    content = response_doc.get("content") or {}
    if content and got.media_type() not in {t.lower() for t in content}:
        problems.append(f"Content-Type {got.media_type() or '(none)'} is not one of "
                        f"{', '.join(content)}")
    for header in response_doc.get("headers") or {}:
        if header.lower() not in got.headers:
            problems.append(f"no {header} header")
    if expect_code is not None and got.error_code() != expect_code:
        problems.append(f"error code {got.error_code()!r}, wanted {expect_code!r}")
    if operation.get("security") == [] and got.status == 401:
        problems.append("an open operation (security: []) asked for a key")
    return problems


# ---- the test ----

def main():
    binary, fixtures, spec_path = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(spec_path) as f:
        spec = yaml.safe_load(f)
    docs = documented(spec)
    fx = Fixtures(fixtures)
    plan = recipes(fx)
    planned = {(p, m, str(s)) for p, m, s, *_ in plan}
    failures = []
    for key in sorted(set(docs) - planned):
        failures.append(f"{' '.join(key)}: documented in openapi.yaml, no recipe provokes it")
    for key in sorted(planned - set(docs)):
        failures.append(f"{' '.join(key)}: a recipe provokes it, openapi.yaml does not document it")

    model = os.path.join(fixtures, "models", "tiny-sd")
    rows = []
    seen = {}  # (path, METHOD, status) -> media types answered
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="latentd-openapi-") as workdir:
        keyfile = os.path.join(workdir, "key")
        with open(keyfile, "w") as f:
            f.write(API_KEY + "\n")
        flags = {
            # a second model, by name, beside tiny-sd (the default)
            "main": ["--model", "sdxl=" + os.path.join(fixtures, "models", "tiny-sdxl-meanstd")],
            # 401 without the key; 413 past a 64 KiB body; 504: one image waits
            # 300 ms for a batch to fill, past its 50 ms deadline
            "keyed": ["--api-key-file", keyfile, "--set", "max_body_bytes=65536",
                      "--max-batch-delay-ms", "300", "--set", "request_timeout_ms=50"],
            # one held image fills a queue of one while it waits 60 s for a batch of four
            "full": ["--max-queue", "1", "--max-batch-delay-ms", "60000", "--vae-split", "4"],
        }
        for name, daemon_flags in flags.items():
            batch = [r for r in plan if r[3] == name]
            daemon = Daemon(name, binary, model, workdir, daemon_flags)
            held = None
            try:
                if name == "full":
                    held = socket.create_connection(("127.0.0.1", daemon.port))
                    held.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png"
                                 + f"\r\nContent-Length: {len(fx.png)}\r\n\r\n".encode() + fx.png)
                    if not daemon.wait_for_metric("latentd_queue_depth", 1):
                        failures.append("full: the held request never filled the queue")
                for path, method, status, _, what, code, provoke in batch:
                    try:
                        got = provoke(daemon)
                    except (OSError, RuntimeError) as e:
                        got = Response(0, {}, str(e).encode())
                    doc = docs.get((path, method, str(status)))
                    problems = []
                    if got.status != status:
                        problems.append(f"got {got.status}: {got.body[:200]!r}")
                    elif doc is None:
                        problems.append("not in openapi.yaml")
                    else:
                        problems = check_against(spec, doc[0], doc[1], code, got)
                        seen.setdefault((path, method, str(status)), set()).add(got.media_type())
                    rows.append((path, method, status, name, what,
                                 code or got.media_type(), "PASS" if not problems else
                                 "UNDOCUMENTED" if doc is None else "FAIL"))
                    failures += [f"{path} {method} {status} ({what}): {p}" for p in problems]
                if held is not None:  # the held request leaves; its image is dropped
                    # a reset: a FIN alone may be a client that half-closed and
                    # still reads, and the daemon answers that one
                    held.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    held.close()
                    held = None
                    if not daemon.wait_for_metric("latentd_queue_depth", 0):
                        failures.append("full: the departed client's image stayed queued")
            finally:
                if held is not None:
                    held.close()
                rc = daemon.stop()
            if rc != 0:
                failures.append(f"latentd ({name}) exited with {rc} on SIGTERM; see its log")

    # every media type a response documents was answered by some recipe
    for key, (response_doc, _) in sorted(docs.items()):
        unseen = {t.lower() for t in response_doc.get("content") or {}} - seen.get(key, set())
        if key in seen and unseen:
            failures.append(f"{' '.join(key)}: no recipe got {', '.join(sorted(unseen))}")

    widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(7)]
    for row in [HEADER] + sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    passed = {r[:3] for r in rows if r[6] == "PASS"}
    print(f"{len(rows)} recipes; {len({(p, m, str(s)) for p, m, s in passed})} of {len(docs)} "
          f"documented (path, method, status) provoked as documented, "
          f"in {time.monotonic() - started:.1f} s")
    for failure in failures:
        print("FAIL  " + failure)
    return 1 if failures else 0


HEADER = ("path", "method", "status", "daemon", "recipe", "code / type", "result")

if __name__ == "__main__":
    sys.exit(main())
