"""Helpers for the e2e tests: a localk8s cluster started and stopped from Python, kubectl and
helm as subprocesses, awaiting conditions with progress, and a keep-alive HTTP client for the
cache through a Service's ClusterIP.

Thread safety: LocalK8s and Cache are used from one thread each; the module functions are
stateless.
"""

import hashlib
import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest

import rbac_audit

ROOT = pathlib.Path(__file__).resolve().parents[2]
OWN_BIN = pathlib.Path(os.environ.get("KVCACHE_BIN_DIR", ROOT / "build" / "bin"))
# Upstream binaries (localk8s, kubectl, helm, kube-*): the worktree's own build, or another
# checkout's (LOCALK8S_BIN_DIR). kvcache-node / kvcache-operator always come from OWN_BIN.
BIN = pathlib.Path(os.environ.get("LOCALK8S_BIN_DIR", OWN_BIN))
CHART = ROOT / "charts" / "kvcache-operator"
SAMPLE = ROOT / "crds" / "samples" / "kvcache-sample.yaml"
OPERATOR_NS = "kvcache-system"
RELEASE = "kvcache-operator"
# The tests pytest deselected (-k, -m), kept by conftest.py for test_rbac_audit.py.
DESELECTED = pytest.StashKey[list]()
# The chart names the ServiceAccount after the release (fullname).
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}"


def log(msg):
    """Progress line on stderr (shown live by pytest -s and by ctest --output-on-failure)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args, check=True, input=None, timeout=300, env=None):
    """Runs a command; returns CompletedProcess (text). Raises AssertionError with both streams
    when check and the exit code is not 0."""
    proc = subprocess.run([str(a) for a in args], input=input, capture_output=True,
                          encoding="utf-8", errors="backslashreplace", timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def await_condition(what, predicate, timeout=300, interval=0.5, progress=None):
    """Polls predicate() until it returns something truthy and returns that. Every ~5 s logs
    progress() (or the last value) so a long wait shows where it is. Raises AssertionError
    naming `what` and the last value after timeout."""
    start = time.monotonic()
    deadline = start + timeout
    next_report = start + 5
    last = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except (AssertionError, OSError, ValueError, KeyError, TypeError, IndexError,
                http.client.HTTPException) as e:
            last = e
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last})")
        if now >= next_report:
            shown = progress() if progress else last
            log(f"  waiting for {what} ({now - start:.0f}s): {shown}")
            next_report = now + 5
        time.sleep(interval)


def ip_forward():
    return pathlib.Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def lk8s_netns():
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("lk8s-")]


class LocalK8s:
    """One localk8s cluster on a state dir: `up` in the background until stop()."""

    def __init__(self, state_dir, nodes=3, extra_images=()):
        self.state = pathlib.Path(state_dir)
        self.nodes = nodes
        self.images = [f"kvcache/kvcache-node={OWN_BIN / 'kvcache-node'}",
                       f"kvcache/kvcache-operator={OWN_BIN / 'kvcache-operator'}",
                       *extra_images]
        self.proc = None
        self.kubeconfig = self.state / "kubeconfig"
        self.log_path = self.state / "localk8s.log"

    def start(self, timeout=300):
        args = [BIN / "localk8s", "up", "--state-dir", self.state, "--nodes", str(self.nodes),
                "--bin-dir", BIN]
        for image in self.images:
            args += ["--image", image]
        self.state.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"localk8s exited {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-3000:])
            return "export KUBECONFIG=" in self.log_path.read_text()
        await_condition("localk8s ready", ready, timeout=timeout,
                        progress=lambda: self._last_log_line())

    def _last_log_line(self):
        lines = self.log_path.read_text().splitlines()
        return lines[-1][:160] if lines else "(no output yet)"

    def stop(self, timeout=120):
        """SIGINT (the launcher removes everything it changed), SIGKILL + `localk8s down` if it
        does not exit in time. Returns the launcher's exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            run([BIN / "localk8s", "down", "--state-dir", self.state], check=False)
            return -9

    def env(self):
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args, check=True, input=None, timeout=120):
        return run([BIN / "kubectl", "--kubeconfig", self.kubeconfig, *args], check=check,
                   input=input, timeout=timeout)

    def get_json(self, *args, check=True):
        out = self.kubectl("get", *args, "-o", "json", check=check)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def helm(self, *args, check=True, timeout=400):
        return run([BIN / "helm", "--kubeconfig", self.kubeconfig, *args], check=check,
                   timeout=timeout)

    def kill_pod(self, namespace, pod):
        run([BIN / "localk8s", "kill-pod", "--state-dir", self.state, "-n", namespace, pod])

    def fault(self, hook, *args):
        """A localk8s fault hook: restart COMPONENT, stop-node NODE, start-node NODE,
        compact-etcd. Returns its output line."""
        out = run([BIN / "localk8s", hook, "--state-dir", self.state, *args], timeout=180)
        return (out.stdout + out.stderr).strip()

    def install_operator(self, extra=(), wait=True):
        """helm install of charts/kvcache-operator (image kvcache/kvcache-operator, mapped to
        OWN_BIN/kvcache-operator); with wait, until the Deployment is ready. Without, it
        returns once the objects (the CRD among them) exist."""
        self.helm("install", RELEASE, CHART, "-n", OPERATOR_NS, "--create-namespace",
                  *(("--wait", "--timeout", "5m") if wait else ()), *extra)

    def operator_requests(self):
        """Every API request of the operator's ServiceAccount so far, from the apiserver's
        audit log (rbac_audit.Request, oldest first)."""
        return rbac_audit.read_requests(self.state / "logs", OPERATOR_USER)

    def operator_metrics(self):
        """{metric line name+labels: value} from the operator's metrics Service (ClusterIP)."""
        svc = self.get_json("svc", "-n", OPERATOR_NS, RELEASE + "-metrics")
        return scrape(svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"])


def scrape(ip, port, timeout=10):
    """{metric line name+labels: value} of http://ip:port/metrics (raises OSError and
    http.client.HTTPException as http.client does)."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def conditions(kvc):
    return {c["type"]: c for c in (kvc.get("status") or {}).get("conditions", [])}


def is_available(kvc):
    """Available=True for the current generation."""
    a = conditions(kvc).get("Available")
    return bool(a and a["status"] == "True"
                and a.get("observedGeneration", kvc["metadata"]["generation"])
                == kvc["metadata"]["generation"]
                and kvc["status"].get("observedGeneration") == kvc["metadata"]["generation"])


def summary(kvc):
    """One line: phase, ready, conditions with reasons (for progress output)."""
    if not kvc:
        return "(absent)"
    st = kvc.get("status") or {}
    conds = " ".join(f"{t}={c['status']}/{c.get('reason', '')}" for t, c in conditions(kvc).items())
    return f"phase={st.get('phase')} ready={st.get('ready')} epoch={st.get('topologyEpoch')} {conds}"


class Cache:
    """HTTP client for the cache at host:port (a ClusterIP), one keep-alive connection,
    reconnecting on error. Every method returns (status, body bytes, headers)."""

    def __init__(self, host, port=8080, timeout=10):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None

    def request(self, method, path, body=None):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port,
                                                           timeout=self.timeout)
                self.conn.request(method, path, body=body)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data, resp
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def put(self, key, value):
        return self.request("PUT", "/v1/" + urllib.parse.quote(key, safe=""), value)

    def get(self, key):
        return self.request("GET", "/v1/" + urllib.parse.quote(key, safe=""))

    def put_retrying(self, key, value, timeout=60):
        """PUT until 200/201 (503 + Retry-After while a slot or role moves); fails otherwise."""
        def ok():
            status, body, _ = self.put(key, value)
            if status in (200, 201):
                return True
            if status == 503:
                return False
            raise AssertionError(f"PUT {key} -> {status} {body[:200]!r}")
        await_condition(f"PUT {key}", ok, timeout=timeout, interval=0.2)

    def get_retrying(self, key, timeout=60):
        """GET until it is not 503; returns (status, body)."""
        result = {}

        def done():
            status, body, _ = self.get(key)
            if status == 503:
                return False
            result["v"] = (status, body)
            return True
        await_condition(f"GET {key}", done, timeout=timeout, interval=0.2)
        return result["v"]

    def list_keys(self, prefix="", limit=10000):
        """Every key of the cluster-wide listing under prefix, following cursors."""
        keys, cursor = [], None
        while True:
            q = {"prefix": prefix, "limit": str(limit)}
            if cursor:
                q["cursor"] = cursor
            status, body, _ = self.request("GET", "/v1?" + urllib.parse.urlencode(q))
            if status != 200:
                raise AssertionError(f"listing -> {status} {body[:200]!r}")
            doc = json.loads(body)
            keys += doc["keys"]
            cursor = doc.get("cursor")
            if not cursor:
                return keys


def checksum(cache, keys):
    """sha256 over key=value of every key (sorted), read through the cache; a missing key or
    an error fails."""
    h = hashlib.sha256()
    for key in sorted(keys):
        status, body = cache.get_retrying(key)
        assert status == 200, f"GET {key} -> {status} {body[:200]!r}"
        h.update(key.encode() + b"=" + body + b"\n")
    return h.hexdigest()
