#!/usr/bin/env python3
"""Raft benchmark: config propagation latency across 3 members, the size and apply time of one
endpoint change with 10,000 Ingresses loaded, and the cold start of a member holding that state.

Usage: bench/raft.sh (builds the release binary, then runs this). Loopback only.
"""
import json, os, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request, socket

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/raftgate"
CHANGES = int(os.environ.get("CHANGES", "200"))
INGRESSES = int(os.environ.get("INGRESSES", "10000"))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def status(admin):
    with urllib.request.urlopen(f"http://{admin}/api/v1/status", timeout=2) as r:
        return json.load(r)


def ready(admin):
    try:
        with urllib.request.urlopen(f"http://{admin}/readyz", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


class Group:
    def __init__(self, root, n, poll="10ms"):
        self.root, self.procs, self.members = root, {}, []
        subprocess.run([BIN, "cert", "--out", f"{root}/certs"] + [f"--node=n{i}=127.0.0.1" for i in range(1, n + 1)],
                       check=True, stdout=subprocess.DEVNULL)
        os.makedirs(f"{root}/manifests", exist_ok=True)
        rafts = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        for i in range(1, n + 1):
            admin = f"127.0.0.1:{free_port()}"
            join = "" if i == 1 else f'  join: ["{rafts[0]}"]\n'
            cfg = (f"node_id: n{i}\nlisten: {{http: \"127.0.0.1:{free_port()}\", https: null}}\n"
                   f"admin: {{listen: \"{admin}\"}}\n"
                   f"source: {{kind: manifests, path: \"{root}/manifests\", poll_interval: {poll}}}\n"
                   f"log: {{level: warn}}\n"
                   f"raft:\n  id: {i}\n  listen: \"{rafts[i-1]}\"\n  data_dir: \"{root}/data{i}\"\n{join}"
                   f"  tls: {{ca: \"{root}/certs/ca.crt\", cert: \"{root}/certs/n{i}.crt\", key: \"{root}/certs/n{i}.key\"}}\n")
            path = f"{root}/n{i}.yaml"
            open(path, "w").write(cfg)
            self.members.append((i, path, admin))

    def start(self, i):
        _, path, _ = self.members[i]
        self.procs[i] = subprocess.Popen([BIN, "run", "--config", path], stdout=subprocess.DEVNULL,
                                         stderr=open(f"{self.root}/n{i+1}.log", "a"))

    def kill(self, i):
        p = self.procs.pop(i, None)
        if p:
            p.send_signal(signal.SIGKILL); p.wait()

    def stop_all(self):
        for i in list(self.procs):
            self.kill(i)

    def versions(self):
        out = []
        for _, _, admin in self.members:
            try:
                out.append(status(admin)["config_version"])
            except Exception:
                out.append(-1)
        return out

    def wait(self, cond, what, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.0005)
        raise SystemExit(f"timed out: {what}")


def write(root, name, text):
    tmp = f"{root}/.{name}.tmp"
    open(tmp, "w").write(text)
    os.rename(tmp, f"{root}/manifests/{name}")


def site(i, port):
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: bench}}\n"
            f"spec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n---\n"
            f"apiVersion: v1\nkind: Endpoints\nmetadata: {{name: s{i}, namespace: bench}}\n"
            f"subsets: [{{addresses: [{{ip: 10.0.{i // 250 % 250}.{i % 250 + 1}}}], ports: [{{name: http, port: {port}}}]}}]\n---\n"
            f"apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: i{i}, namespace: bench}}\n"
            f"spec: {{ingressClassName: raftgate, rules: [{{host: h{i}.example, http: {{paths: [{{path: /, pathType: Prefix, "
            f"backend: {{service: {{name: s{i}, port: {{number: 80}}}}}}}}]}}}}]}}\n---\n")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def propagation():
    root = tempfile.mkdtemp(prefix="raftgate-bench-")
    g = Group(root, 3)
    try:
        for i in range(3):
            g.start(i)
        g.wait(lambda: min(g.versions()) >= 1 and len(set(g.versions())) == 1, "group up")
        lat = []
        for c in range(CHANGES):
            before = max(g.versions())
            t0 = time.monotonic()
            write(root, "site.yaml", site(c, 8000 + c))
            g.wait(lambda: min(g.versions()) > before, f"change {c}")
            lat.append((time.monotonic() - t0) * 1000)
        print(f"propagation to all 3 members over {CHANGES} changes (manifest poll 10 ms, mutual TLS): "
              f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms")
    finally:
        g.stop_all(); shutil.rmtree(root, ignore_errors=True)


def large_state():
    root = tempfile.mkdtemp(prefix="raftgate-bench-")
    g = Group(root, 3, poll="100ms")
    try:
        # Load in one file per 1,000 Ingresses, before the group starts.
        os.makedirs(f"{root}/manifests", exist_ok=True)
        for f in range(INGRESSES // 1000):
            open(f"{root}/manifests/part{f}.yaml", "w").write("".join(site(i, 8080) for i in range(f * 1000, (f + 1) * 1000)))
        for i in range(3):
            g.start(i)
        t0 = time.monotonic()
        g.wait(lambda: min(g.versions()) >= 1 and len(set(g.versions())) == 1, "10k loaded", timeout=600)
        print(f"{INGRESSES} Ingresses compiled and replicated to 3 members in {time.monotonic() - t0:.1f} s")
        # One endpoint change: a new address for one Service.
        before = max(g.versions())
        text = open(f"{root}/manifests/part0.yaml").read().replace("ip: 10.0.0.6}", "ip: 10.9.9.9}", 1)
        t0 = time.monotonic()
        write(root, "part0.yaml", text)
        g.wait(lambda: min(g.versions()) > before, "endpoint change")
        took = (time.monotonic() - t0) * 1000
        leader = [status(a) for _, _, a in g.members]
        size = [s["raft"]["last_batch_bytes"] for s in leader if s["raft"]["source_running"]][0]
        apply_us = [s["raft"]["last_apply_us"] for s in leader]
        print(f"one endpoint change with {INGRESSES} Ingresses: log entry {size} bytes, apply into the data plane "
              f"{min(apply_us) / 1000:.1f}-{max(apply_us) / 1000:.1f} ms per member, on all 3 after {took:.0f} ms")
        # Cold start of a member holding that state.
        g.kill(2)
        t0 = time.monotonic()
        g.start(2)
        admin = g.members[2][2]
        g.wait(lambda: ready(admin), "cold start")
        took = (time.monotonic() - t0) * 1000
        print(f"cold start of a member holding {INGRESSES} Ingresses (process start to /readyz 200): {took:.0f} ms")
    finally:
        g.stop_all(); shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if os.environ.get("SKIP_PROPAGATION") != "1":
        propagation()
    large_state()
