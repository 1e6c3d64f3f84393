#!/usr/bin/env python3
"""Kubernetes source benchmark: the time from an object's change in the API server to all 3
members serving it (p50/p99 over CHANGES changes), and BURST Ingresses created at once, all
serving within how long, with each member's RSS.

Usage: bench/kube.sh (builds the release binaries, then runs this). Loopback only. The API
server is raftgate's test API server (chaos-tests), with the real list/watch semantics.
"""
import http.client, json, os, shutil, signal, subprocess, sys, tempfile, threading, time

from raft import free_port, pct, status  # bench/raft.py, beside this file

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/raftgate"
API_BIN = sys.argv[2] if len(sys.argv) > 2 else "target/release/raftgate-test-apiserver"
CHANGES = int(os.environ.get("CHANGES", "200"))
BURST = int(os.environ.get("BURST", "10000"))


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Api:
    """A kubectl-like client of the test API server, one keep-alive connection per thread."""

    def __init__(self, url):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        return c

    def send(self, method, path, body):
        data = json.dumps(body).encode()
        for attempt in range(3):
            try:
                c = self.conn()
                c.request(method, path, data, {"Content-Type": "application/json"})
                r = c.getresponse(); out = r.read()
                if r.status >= 300:
                    raise SystemExit(f"{method} {path}: {r.status} {out[:200]!r}")
                return json.loads(out)
            except (http.client.HTTPException, ConnectionError):
                self.local.c = None
        raise SystemExit(f"{method} {path}: connection failed")

    def apply(self, obj):
        kind = obj["kind"]; ns = obj["metadata"]["namespace"]; name = obj["metadata"]["name"]
        base = {"Ingress": f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
                "Service": f"/api/v1/namespaces/{ns}/services",
                "EndpointSlice": f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"}[kind]
        c = self.conn()
        c.request("GET", f"{base}/{name}"); r = c.getresponse(); r.read()
        if r.status == 404:
            return self.send("POST", base, obj)
        return self.send("PUT", f"{base}/{name}", obj)


def service(i):
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "bench"},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"s{i}-a", "namespace": "bench", "labels": {"kubernetes.io/service-name": f"s{i}"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
         "endpoints": [{"addresses": [f"10.0.{i // 250 % 250}.{i % 250 + 1}"], "conditions": {"ready": True}}]},
    ]


def ingress(i, svc):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": f"i{i}", "namespace": "bench"},
            "spec": {"ingressClassName": "raftgate", "rules": [{"host": f"h{i}.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": f"s{svc}", "port": {"number": 80}}}}]}}]}}


class Setup:
    def __init__(self, n=3):
        self.root = tempfile.mkdtemp(prefix="raftgate-kbench-")
        root = self.root
        self.api_proc = subprocess.Popen([API_BIN, "--listen", "127.0.0.1:0", "--kubeconfig-out", f"{root}/kubeconfig"],
                                         stdout=subprocess.PIPE, stderr=open(f"{root}/api.log", "w"), text=True)
        line = self.api_proc.stdout.readline()
        self.api = Api(line.split()[-1])
        subprocess.run([BIN, "cert", "--out", f"{root}/certs"] + [f"--node=n{i}=127.0.0.1" for i in range(1, n + 1)],
                       check=True, stdout=subprocess.DEVNULL)
        rafts = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        self.members, self.procs = [], {}
        for i in range(1, n + 1):
            admin = f"127.0.0.1:{free_port()}"
            join = "" if i == 1 else f'  join: ["{rafts[0]}"]\n'
            cfg = (f"node_id: n{i}\nlisten: {{http: \"127.0.0.1:{free_port()}\", https: null}}\n"
                   f"admin: {{listen: \"{admin}\"}}\n"
                   f"source: {{kind: kubernetes, kubeconfig: \"{root}/kubeconfig\"}}\n"
                   f"log: {{level: warn}}\n"
                   f"raft:\n  id: {i}\n  listen: \"{rafts[i-1]}\"\n  data_dir: \"{root}/data{i}\"\n{join}"
                   f"  tls: {{ca: \"{root}/certs/ca.crt\", cert: \"{root}/certs/n{i}.crt\", key: \"{root}/certs/n{i}.key\"}}\n")
            path = f"{root}/n{i}.yaml"
            open(path, "w").write(cfg)
            self.members.append((path, admin))
        for i in range(n):
            self.procs[i] = subprocess.Popen([BIN, "run", "--config", self.members[i][0]], stdout=subprocess.DEVNULL,
                                             stderr=open(f"{root}/n{i+1}.log", "a"))

    def statuses(self):
        out = []
        for _, admin in self.members:
            try:
                out.append(status(admin))
            except Exception:
                out.append(None)
        return out

    def versions(self):
        return [s["config_version"] if s else -1 for s in self.statuses()]

    def wait(self, cond, what, timeout=120, step=0.0005):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(step)
        raise SystemExit(f"timed out: {what}; logs in {self.root}")

    def close(self):
        for p in list(self.procs.values()) + [self.api_proc]:
            p.send_signal(signal.SIGKILL); p.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def propagation():
    s = Setup()
    try:
        for o in service(0):
            s.api.apply(o)
        s.wait(lambda: min(s.versions()) >= 1 and len(set(s.versions())) == 1, "group up", step=0.01)
        lat = []
        for c in range(CHANGES):
            before = max(s.versions())
            t0 = time.monotonic()
            # Alternate: a new Ingress, then a changed endpoint of an existing Service.
            if c % 2 == 0:
                s.api.apply(ingress(c, 0))
            else:
                sl = service(0)[1]
                sl["endpoints"][0]["addresses"] = [f"10.1.{c // 250}.{c % 250 + 1}"]
                s.api.apply(sl)
            s.wait(lambda: min(s.versions()) > before, f"change {c}")
            lat.append((time.monotonic() - t0) * 1000)
        print(f"API server change to served on all 3 members, {CHANGES} changes (Ingress creates and EndpointSlice "
              f"updates alternating; debounce 10 ms, mutual TLS): p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
              f"max {max(lat):.1f} ms")
    finally:
        s.close()


def burst():
    s = Setup()
    try:
        for o in service(0):
            s.api.apply(o)
        s.wait(lambda: min(s.versions()) >= 1 and len(set(s.versions())) == 1, "group up", step=0.01)
        base_routes = max(st["routes"] for st in s.statuses())
        t0 = time.monotonic()
        threads = []
        for t in range(4):
            def run(t=t):
                for i in range(t, BURST, 4):
                    s.api.send("POST", "/apis/networking.k8s.io/v1/namespaces/bench/ingresses", ingress(i, 0))
            th = threading.Thread(target=run); th.start(); threads.append(th)
        for th in threads:
            th.join()
        created = time.monotonic() - t0
        s.wait(lambda: all(st and st["routes"] >= base_routes + BURST for st in s.statuses()) and len(set(s.versions())) == 1,
               f"{BURST} Ingresses served", timeout=600, step=0.05)
        took = time.monotonic() - t0
        rss = [rss_mib(p.pid) for p in s.procs.values()]
        print(f"{BURST} Ingresses created in one burst (4 client threads, all created after {created:.1f} s): "
              f"all serving on all 3 members after {took:.1f} s; RSS per member "
              + ", ".join(f"{r:.0f} MiB" for r in rss))
    finally:
        s.close()


if __name__ == "__main__":
    if os.environ.get("SKIP_PROPAGATION") != "1":
        propagation()
    burst()
