"""srvtest.py: helpers for the ditmoe-server tests (stdlib only).

Server starts ditmoe-server on an ephemeral loopback port (--port 0; the
port is read from the "listening on" line), waits for /ready and stops it
with SIGTERM, checking the exit status. Requests go through http.client,
one connection each unless a test asks otherwise. png_decode reads the
8-bit gray/RGB PNGs the server writes, so images can be compared pixel for
pixel.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
FAILURES = []


def check(cond, what):
    """Records a failed assertion (the test goes on, and fails at the end)."""
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)
    return cond


def finish(name):
    if FAILURES:
        print(f"{name}: {len(FAILURES)} failure(s)")
        sys.exit(1)
    print(f"{name}: ok")


def wait_for(pred, timeout, what, step=0.02):
    """Polls pred() until true; records a failure after timeout seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    check(False, f"timed out after {timeout}s waiting for {what}")
    return None


CLASSES = ["T-shirt/top, tshirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot, boot"]
# The test models' config.json: 16x16 gray images, 2 MoE layers of 4
# experts, top-2, 10 named classes, rectified flow, Euler by default; "slow"
# is larger (32x32, 4 layers of 8 experts) so steps take long enough that
# jobs can be caught queued or running; "latent" (8x8x4 latents, a small
# random SD-VAE in vae/) is written by make_model.py with PyTorch.
CONFIGS = {
    None: dict(input_size=16, patch_size=4, in_channels=1, hidden_size=32, depth=2,
               num_heads=2, mlp_ratio=2.0, num_classes=10, num_experts=4,
               num_experts_per_tok=2, n_shared_experts=1, learn_sigma=False,
               class_dropout_prob=0.1, prediction="velocity", class_names=CLASSES,
               sampling={"sampler": "euler", "steps": 8, "cfg_scale": 1.5}),
}
CONFIGS["slow"] = dict(CONFIGS[None], input_size=32, hidden_size=128, depth=4, num_heads=4,
                       mlp_ratio=4.0, num_experts=8)
CONFIGS["latent"] = dict(CONFIGS[None], input_size=8, patch_size=2, in_channels=4)
# "defaults": config.json's "sampling" sets every option a request can
# (tests/server test_defaults)
CONFIGS["defaults"] = dict(CONFIGS[None], sampling={
    "sampler": "dpm++2m", "steps": 6, "spacing": "logsnr", "cfg_scale": 3.0,
    "cfg_interval": [0.2, 0.65], "cache": {"mode": "fixed", "interval": 3}})


def make_model(cache, slow=False, kind=None):
    """A random-weight test model, made once per build dir: kind None (the
    small pixel model), "slow" or "defaults" by `ditmoe synth` (DITMOE_CLI,
    no PyTorch needed), "latent" (with a VAE) by make_model.py (PyTorch)."""
    kind = kind or ("slow" if slow else None)
    path = os.path.join(cache, "server-test-model" + ("-" + kind if kind else ""))
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    tmp = tempfile.mkdtemp(dir=cache, prefix="model-tmp-")
    if kind == "latent":
        subprocess.run(["/usr/bin/python3", os.path.join(HERE, "make_model.py"), tmp],
                       check=True)
    else:
        cfg = os.path.join(tmp, "wanted.json")
        with open(cfg, "w") as f:
            json.dump(CONFIGS[kind], f)
        subprocess.run([os.environ["DITMOE_CLI"], "synth", "--config", cfg, "--out", tmp,
                        "--seed", "3"], check=True, stdout=subprocess.DEVNULL)
        os.remove(cfg)
    try:
        os.rename(tmp, path)  # atomic: a parallel test may have won
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


class Response:
    def __init__(self, r, body):
        self.status = r.status
        self.headers = {k.lower(): v for k, v in r.getheaders()}
        self.body = body

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name.lower())


class Server:
    def __init__(self, exe, model, *args, env=None, threads=1, blas=1, listen="127.0.0.1"):
        self.log_file = tempfile.NamedTemporaryFile(prefix="ditmoe-server-", suffix=".log",
                                                    delete=False)
        cmd = [exe] + (["--listen", listen] if listen else []) + [
            "--port", "0", "--threads", str(threads), "--blas-threads", str(blas)]
        if model:
            cmd += ["--model", model]
        cmd += [str(a) for a in args]
        e = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log_file, env=e,
                                     text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.wait(10)
            raise RuntimeError(f"server did not start: {line!r}\n{self.log()}")
        self.host, port = line.split("http://", 1)[1].strip().rsplit(":", 1)
        self.host = self.host.strip("[]")
        self.port = int(port)
        wait_for(lambda: self.try_get("/ready") == 200, 60, "/ready")

    def log(self):
        with open(self.log_file.name, errors="replace") as f:
            return f.read()

    def try_get(self, path):
        try:
            return self.request("GET", path).status
        except OSError:
            return None

    def conn(self, timeout=120):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=120):
        c = self.conn(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return Response(r, r.read())
        finally:
            c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body=body, **kw)

    def stats(self):
        return self.get("/stats").json()

    def metric(self, name):
        """Value of one exact sample line of /metrics (0 when absent)."""
        for line in self.get("/metrics").body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def raw(self, data, timeout=10):
        """A raw socket that has sent data (bytes)."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        if data:
            s.sendall(data)
        return s

    def stop(self, sig=signal.SIGTERM, timeout=90):
        """Signals the server; returns its exit status (None if it hung)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def close(self):
        rc = self.stop()
        check(rc == 0, f"server exited with {rc} on SIGTERM (log: {self.log_file.name})")
        sanitizer = [l for l in self.log().splitlines()
                     if "Sanitizer" in l or "runtime error" in l]
        check(not sanitizer, "sanitizer reports: " + "; ".join(sanitizer[:5]))
        if not FAILURES:
            os.unlink(self.log_file.name)


def png_decode(data):
    """(width, height, channels, pixels as bytes) of an 8-bit gray or RGB PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and ctype in (0, 2), "only 8-bit gray/RGB"
            ch = 1 if ctype == 0 else 3
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw, stride, out, prev = zlib.decompress(idat), w * ch, bytearray(), bytearray(w * ch)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return w, h, ch, bytes(out)


def max_pixel_diff(a, b):
    """Largest absolute difference of two PNGs' pixels (None if shapes differ)."""
    wa, ha, ca, pa = png_decode(a)
    wb, hb, cb, pb = png_decode(b)
    if (wa, ha, ca) != (wb, hb, cb):
        return None
    return max(abs(x - y) for x, y in zip(pa, pb))
