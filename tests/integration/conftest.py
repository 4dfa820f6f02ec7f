"""Shared fixtures for black-box tests of the real kvcache-node binary.

Each test gets its own node on 127.0.0.1 with port 0 (the node writes the port it bound to
--port-file) and its own data directory; the node is stopped with SIGTERM at teardown and
must exit 0.
"""

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

NODE_BIN = os.environ.get(
    "KVCACHE_NODE_BIN",
    str(Path(__file__).resolve().parents[2] / "build" / "bin" / "kvcache-node"),
)


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls predicate until it returns a truthy value; fails the test after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Node:
    proc: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout=10.0) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL and fail if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("node did not exit within %ss of SIGTERM" % timeout)
        return self.proc.returncode


def start_node(tmp_path: Path, extra_args=(), name="node", env=None, wait_ready=True,
               data_dir=None, listen="127.0.0.1:0") -> Node:
    work = tmp_path / name
    work.mkdir(parents=True, exist_ok=True)
    port_file = work / "port"
    log_path = work / "log"
    data_dir = Path(data_dir) if data_dir else work / "data"
    args = [
        NODE_BIN,
        "--listen", listen,
        "--port-file", str(port_file),
        "--data-dir", str(data_dir),
        *extra_args,
    ]
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def port_ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"node exited with {proc.returncode}: {log_path.read_text(errors='replace')}"
            )
        text = port_file.read_text() if port_file.exists() else ""
        return int(text) if text.strip() else None

    port = wait_for(port_ready, what="node to bind its port")
    node = Node(proc=proc, port=port, data_dir=data_dir, log_path=log_path,
                host=listen.rsplit(":", 1)[0])
    if wait_ready:
        def ready():
            port_ready()  # fails fast if the process died
            try:
                return requests.get(node.url + "/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_for(ready, timeout=60, what="node to become ready")
    return node


@pytest.fixture
def node_factory(tmp_path):
    started = []

    def factory(*extra_args, name=None, env=None, wait_ready=True, data_dir=None):
        n = start_node(tmp_path, extra_args, name=name or f"node{len(started)}", env=env,
                       wait_ready=wait_ready, data_dir=data_dir)
        started.append(n)
        return n

    yield factory
    for n in started:
        if n.proc.poll() is None:
            n.proc.kill()
            n.proc.wait()


@pytest.fixture
def node(tmp_path):
    n = start_node(tmp_path)
    yield n
    if n.proc.poll() is None:
        code = n.stop()
        assert code == 0, f"node exited {code} on SIGTERM:\n{n.log()}"


@pytest.fixture
def http():
    with requests.Session() as s:
        yield s
