#!/usr/bin/python3
"""test_proxy.py --server BIN --nginx NGINX --source-root DIR

Real nginx with the project's docker/nginx.conf (only the marked listen and
upstream server lines substituted, plus private temp paths) in front of two
ditmoe-server replicas configured by docker/server-proxied.json, all on
loopback. The test's client connects from 127.0.0.3 while nginx reaches the
replicas from 127.0.0.1, the only trusted proxy, so the replicas' access
logs show whether the forwarded client address was believed correctly.

Checked through the proxy: /generate answers a PNG; requests reach both
replicas; the client address is the real one, not a spoofed
X-Forwarded-For; a job's events stream step by step (the first step event
arrives while the job is still running) whichever replica the stream request
lands on first; job status, image and cancel reach the replica that has the
job; /stats, /v1/model, /metrics and the OpenAI-style
/v1/images/generations answer; a full queue's 429 comes through
with Retry-After; after one replica is killed every request still succeeds.
Exits 77 (skipped) without nginx, or without a model and PyTorch to make one.
"""
import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
CLIENT = "127.0.0.3"      # the test's address; nginx and the replicas are on 127.0.0.1
SPOOF = "203.0.113.9"     # what a client writes into X-Forwarded-For to lie
PNG = b"\x89PNG\r\n\x1a\n"
HERE = os.path.dirname(os.path.abspath(__file__))


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def request(port, method, path, body=None, headers=None, timeout=120, source=CLIENT):
    """-> (status, {lower-case header: value}, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def wait_for(what, fn, limit_s):
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            if fn():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {limit_s} s")


class Replica:
    def __init__(self, args, model, tmp, name):
        self.name = name
        self.log = os.path.join(tmp, name + ".log")
        self.out = os.path.join(tmp, name + ".out")
        cmd = [args.server, "--config", os.path.join(args.source_root, "docker", "server-proxied.json"),
               "--listen", "127.0.0.1", "--port", "0", "--model", model, "--threads", "1",
               "--web_root", os.path.join(args.source_root, "web"),
               "--trusted_proxies", "127.0.0.1", "--queue_capacity", "1", "--drain_timeout_s", "0"]
        with open(self.out, "wb") as out, open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=log, stdin=subprocess.DEVNULL)
        self.port = None

        def listening():
            check(self.proc.poll() is None, f"{name} exited: {self.tail()}")
            m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", open(self.out, "rb").read())
            if m:
                self.port = int(m.group(1))
            return self.port
        wait_for(f"{name} listening", listening, 30)
        wait_for(f"{name} /ready", lambda: request(self.port, "GET", "/ready", source="127.0.0.1")[0] == 200
                 or check(self.proc.poll() is None, f"{name} exited: {self.tail()}"), 180)

    def tail(self):
        return open(self.log, "rb").read()[-3000:].decode(errors="replace")

    def access(self, method, path_re):
        """(client, status) of each access-log line for method and path."""
        pat = re.compile(rb"^access (\S+) " + method.encode() + rb" (" + path_re.encode() + rb") (\d+) ", re.M)
        return [(m.group(1).decode(), int(m.group(3))) for m in pat.finditer(open(self.log, "rb").read())]

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def sub_block(text, name, fn):
    """Replaces the lines between '# BEGIN name' and '# END name' by fn(lines)."""
    m = re.search(r"# BEGIN " + name + r"[^\n]*\n(.*?)\n[ \t]*# END " + name, text, re.S)
    check(m, f"docker/nginx.conf: no '# BEGIN {name}' ... '# END {name}' block")
    return text[:m.start(1)] + fn(m.group(1)) + text[m.end(1):]


def nginx_conf(src, tmp, listen_port, upstream_ports):
    text = open(src).read()

    def upstream(block):
        m = re.search(r"^([ \t]*)server[ \t]+\S+((?:[ \t]+[^;\n]+)?);[ \t]*$", block, re.M)
        check(m, "docker/nginx.conf: no 'server HOST:PORT ...;' line in the upstream block")
        lines = "\n".join(f"{m.group(1)}server 127.0.0.1:{p}{m.group(2)};" for p in upstream_ports)
        return block[:m.start()] + lines + block[m.end():]

    def listen(block):
        out, n = re.subn(r"listen[ \t]+[^;]+;", f"listen 127.0.0.1:{listen_port};", block)
        check(n == 1, "docker/nginx.conf: expected one listen line in the listen block")
        return out

    text = sub_block(text, "upstream", upstream)
    text = sub_block(text, "listen", listen)
    # Temp files under the test's prefix, not the system's /var/lib/nginx.
    temps = "".join(f"    {k}_temp_path {os.path.join(tmp, k)};\n"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text, n = re.subn(r"^http \{\n", "http {\n" + temps, text, count=1, flags=re.M)
    check(n == 1, "docker/nginx.conf: no 'http {' line")
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, nginx, conf, tmp):
        self.tmp = tmp
        self.err = os.path.join(tmp, "nginx-error.log")
        self.acc = os.path.join(tmp, "nginx-access.log")
        base = [nginx, "-p", tmp + "/", "-e", self.err, "-c", conf]
        glob = ["-g", f"daemon off; pid {os.path.join(tmp, 'nginx.pid')};"]
        t = subprocess.run(base + glob + ["-t"], capture_output=True, text=True, timeout=30)
        check(t.returncode == 0, "nginx -t:\n" + t.stdout + t.stderr)
        with open(self.acc, "wb") as out, open(os.path.join(tmp, "nginx.stderr"), "wb") as err:
            self.proc = subprocess.Popen(base + glob, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def access(self):
        """The JSON access-log records written so far."""
        recs = []
        for line in open(self.acc, "rb").read().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
        return recs

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, master exits
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def generate_png(port, seed):
    st, h, body = request(port, "POST", "/generate", {"class_label": 1, "seed": seed, "steps": 4},
                          {"X-Forwarded-For": SPOOF, "Content-Type": "application/json"})
    check(st == 200, f"POST /generate: {st} {body[:300]!r}")
    check(h.get("content-type") == "image/png" and body.startswith(PNG),
          f"POST /generate: not a PNG: {h.get('content-type')} {body[:16]!r}")
    return float(h.get("x-compute-ms", "0")) / 4  # per step of one image


def submit(port, body):
    st, h, data = request(port, "POST", "/jobs", body, {"Content-Type": "application/json"})
    try:
        return st, h, json.loads(data)
    except ValueError:
        raise AssertionError(f"POST /jobs: {st}, not JSON: {data[:300]!r}") from None


def stream_events(port, job_id, steps, live=True):
    """Reads /jobs/{id}/events through the proxy. At the first step event,
    asks the proxy for the job's status: a stream delivered as produced shows
    the job still running then (checked when live; a job of a few small steps
    may really be over by then). Returns the events [(name, data)]."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120, source_address=(CLIENT, 0))
    try:
        # as a browser's EventSource asks: a compressing proxy would hold events back
        conn.request("GET", f"/jobs/{job_id}/events",
                     headers={"Accept": "text/event-stream", "Accept-Encoding": "gzip, deflate"})
        r = conn.getresponse()
        if r.status != 200:
            raise AssertionError(f"GET /jobs/{job_id}/events: {r.status} {r.read()[:300]!r}")
        check(r.getheader("Content-Type", "").startswith("text/event-stream"),
              f"events content type {r.getheader('Content-Type')}")
        check(r.getheader("X-Accel-Buffering") == "no", "the events location did not add X-Accel-Buffering: no")
        check(r.getheader("Content-Encoding") is None, f"events compressed: {r.getheader('Content-Encoding')}")
        events, name, status_at_first = [], None, None
        while True:
            line = r.readline()
            check(line, f"events of {job_id}: stream ended before the job did: {events[-3:]}")
            line = line.rstrip(b"\r\n").decode()
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                events.append((name, data))
                if name == "step" and status_at_first is None:
                    st, _, body = request(port, "GET", f"/jobs/{job_id}")
                    check(st == 200, f"GET /jobs/{job_id} during the stream: {st} {body[:200]!r}")
                    status_at_first = json.loads(body)
                if name in ("done", "failed", "cancelled"):
                    break
    finally:
        conn.close()
    check(status_at_first is not None, f"no step event in {events}")
    check(not live or status_at_first["status"] == "running" and status_at_first["step"] < steps,
          "the first step event arrived only after the job ended (the stream is buffered): "
          f"status then {status_at_first['status']}, step {status_at_first['step']} of {steps}")
    got = [d["step"] for n, d in events if n == "step"]
    check(got == list(range(1, steps + 1)), f"step events {got}, expected 1..{steps}")
    check(events[-1][0] == "done", f"last event {events[-1]}")
    return events


def job_owner(replicas, job_id):
    owners = [r for r in replicas if r.proc.poll() is None and
              request(r.port, "GET", f"/jobs/{job_id}", source="127.0.0.1")[0] == 200]
    check(len(owners) == 1, f"job {job_id} is known to {len(owners)} replicas")
    return owners[0]


def test_events(port, replicas, nx, steps, images):
    """Two jobs: each job's events, status and image through the proxy; the
    round robin sends some of these lookups to the replica without the job
    first, and nginx must move on to the one that has it."""
    before = len(nx.access())
    for seed in (11, 12):
        st, h, o = submit(port, {"class_label": 2, "seed": seed, "steps": steps, "num_images": images})
        check(st == 202 and o and o.get("id"), f"POST /jobs: {st} {o}")
        job_owner(replicas, o["id"])
        stream_events(port, o["id"], steps)
        for _ in range(3):
            st, _, body = request(port, "GET", f"/jobs/{o['id']}")
            check(st == 200 and json.loads(body)["status"] == "done", f"GET /jobs/{o['id']}: {st} {body[:200]!r}")
        st, h, body = request(port, "GET", f"/jobs/{o['id']}/image")
        check(st == 200 and body.startswith(PNG), f"GET /jobs/{o['id']}/image: {st} {body[:100]!r}")
    tried_two = [r for r in nx.access()[before:] if r["request"].split()[1].startswith("/jobs/")
                 and "," in r["upstream"]]
    check(tried_two, "no /jobs/{id} request was first sent to the replica without the job: "
          "the 404 fallback was not exercised")
    check(all(r["status"] == 200 for r in tried_two), f"fallback answers: {tried_two}")


def test_queue_full(port, replicas):
    """Long jobs of max_rows rows each (16 images, CFG) until a replica's
    queue (capacity 1) is full: its 429 and
    Retry-After come through unchanged; then cancel them all via the proxy."""
    ids, full = [], None
    for i in range(12):
        st, h, o = submit(port, {"class_label": 0, "seed": 100 + i, "steps": 1000,
                                "num_images": 16, "cfg_scale": 2.0})
        if st == 429:
            full = (h, o)
            break
        check(st == 202, f"POST /jobs (filling the queues): {st} {o}")
        ids.append(o["id"])
    try:
        check(full, "no 429 after 12 long jobs on replicas with queue_capacity 1")
        h, o = full
        check(re.fullmatch(r"\d+", h.get("retry-after", "")), f"429 without Retry-After: {h}")
        check(o["error"]["type"] == "queue_full", f"429 body {o}")
    finally:
        for job_id in ids:
            st, _, body = request(port, "DELETE", f"/jobs/{job_id}")
            check(st in (200, 409), f"DELETE /jobs/{job_id}: {st} {body[:200]!r}")

    def all_ended():
        return all(json.loads(request(port, "GET", f"/jobs/{j}")[2])["status"] in ("cancelled", "done")
                   for j in ids)
    wait_for("cancelled jobs ending", all_ended, 120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--nginx", default="")
    ap.add_argument("--source-root", required=True)
    args = ap.parse_args()
    if not args.nginx or not os.access(args.nginx, os.X_OK):
        print("SKIP: nginx not installed (scripts/install-deps --test)")
        return SKIP
    signal.alarm(900)  # a hang fails the test instead of blocking the suite
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ditmoe-proxy-") as tmp:
        os.chmod(tmp, 0o755)  # nginx workers run unprivileged
        model = os.path.join(args.source_root, "models", "fashion-mnist")
        if not os.path.exists(os.path.join(model, "config.json")):
            model = os.path.join(tmp, "model")
            mk = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "make_model.py"), model],
                                capture_output=True, text=True, timeout=300)
            if mk.returncode:
                print("SKIP: no models/fashion-mnist and no PyTorch to make a model:\n" + mk.stderr[-1000:])
                return SKIP
        replicas, nx = [], None
        try:
            replicas = [Replica(args, model, tmp, f"replica{i}") for i in (1, 2)]
            port = free_port()
            conf = nginx_conf(os.path.join(args.source_root, "docker", "nginx.conf"), tmp, port,
                              [r.port for r in replicas])
            nx = Nginx(args.nginx, conf, tmp)
            wait_for("nginx", lambda: check(nx.proc.poll() is None, "nginx exited") or
                     request(port, "GET", "/health")[0] == 200, 30)
            print(f"replicas on {[r.port for r in replicas]}, nginx on {port}, model {model}")

            step_ms = min(generate_png(port, seed) for seed in range(6))
            for r in replicas:
                hits = r.access("POST", "/generate")
                check(hits, f"{r.name} got no /generate: the proxy did not spread requests")
                check(all(c == CLIENT and s == 200 for c, s in hits),
                      f"{r.name} logged clients {hits}: expected the real client {CLIENT} "
                      f"(not nginx's 127.0.0.1, not the spoofed {SPOOF})")
            print("PNG through the proxy, both replicas used:",
                  [len(r.access('POST', '/generate')) for r in replicas])

            for path in ("/stats", "/v1/model", "/metrics"):
                st, _, body = request(port, "GET", path)
                check(st == 200 and body, f"GET {path}: {st} {body[:200]!r}")
            st, _, body = request(port, "POST", "/v1/images/generations",
                                  {"prompt": 1, "n": 2, "steps": 4},
                                  {"Content-Type": "application/json"})
            data = json.loads(body).get("data", []) if st == 200 else []
            check(len(data) == 2 and all(d.get("b64_json") for d in data),
                  f"POST /v1/images/generations through the proxy: {st} {body[:200]!r}")
            json.loads(request(port, "GET", "/stats")[2])

            # A job of two images lasting about 2 s or more, so that the
            # "still running at the first step event" check has room.
            test_events(port, replicas, nx, steps=min(1000, max(24, int(1000 / max(step_ms, 0.5)))),
                        images=2)
            print(f"events streamed step by step ({step_ms:.1f} ms per image step); "
                  "job lookups reach the replica with the job")

            test_queue_full(port, replicas)
            print("429 with Retry-After passes through")

            replicas[1].stop(signal.SIGKILL)
            for seed in range(20, 26):
                generate_png(port, seed)
            for path in ("/stats", "/health", "/v1/model"):
                st, _, body = request(port, "GET", path)
                check(st == 200, f"GET {path} with one replica down: {st} {body[:200]!r}")
            st, _, o = submit(port, {"class_label": 3, "seed": 9, "steps": 4})
            check(st == 202, f"POST /jobs with one replica down: {st} {o}")
            stream_events(port, o["id"], 4, live=False)
            print("with one replica killed every request succeeded")
        except BaseException:
            for r in replicas:
                print(f"---- {r.name} log tail\n{r.tail()}", file=sys.stderr)
            if nx:
                print("---- nginx error log\n" + open(nx.err, errors="replace").read()[-3000:], file=sys.stderr)
                print("---- nginx access log\n" + open(nx.acc, errors="replace").read()[-3000:], file=sys.stderr)
            raise
        finally:
            if nx:
                nx.stop()
            for r in replicas:
                r.stop()
    print(f"ok ({time.monotonic() - t_start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
