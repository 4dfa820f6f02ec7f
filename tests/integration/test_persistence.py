"""Durability of kvcache-node's data directory: SIGKILL crash loops and restarts."""

import os
import random
import signal
import threading
import time

import pytest
import requests

from conftest import start_node, wait_for

PERSIST_FLAGS = (
    "--snapshot-interval-seconds", "1",   # snapshots race with the kills too
    "--snapshot-log-bytes", "32Ki",
    "--log-segment-bytes", "16Ki",
)


_started = []


@pytest.fixture(autouse=True)
def _kill_leftover_nodes():
    """Nodes started by hand in a crash loop are SIGKILLed if a test fails midway."""
    yield
    while _started:
        n = _started.pop()
        if n.proc.poll() is None:
            n.proc.kill()
            n.proc.wait()


class Writer(threading.Thread):
    """Writes and deletes its own keys; remembers what the node acknowledged."""

    def __init__(self, url, name, rng):
        super().__init__(daemon=True)
        self.url, self.name, self.rng = url, name, rng
        self.acked = {}        # key -> value (None: deleted), as acknowledged
        self.in_flight = None  # (key, value) sent but not answered when the node died
        self.stop = threading.Event()
        self.count = 0
        self.token = rng.randrange(1 << 30)

    def run(self):
        with requests.Session() as s:
            while not self.stop.is_set():
                key = f"{self.name}-{self.rng.randrange(40)}"
                delete = key in self.acked and self.acked[key] is not None and self.rng.random() < 0.2
                value = None if delete else (f"{self.name}:{self.token}:{self.count}:" +
                                             "x" * self.rng.randrange(200))
                self.in_flight = (key, value)
                try:
                    if delete:
                        r = s.delete(f"{self.url}/v1/{key}", timeout=5)
                        ok = r.status_code == 204
                    else:
                        r = s.put(f"{self.url}/v1/{key}", data=value, timeout=5)
                        ok = r.status_code in (200, 201)
                except requests.RequestException:
                    return  # the node died: in_flight stays set
                if not ok:
                    raise AssertionError(f"unexpected {r.status_code}: {r.text}")
                self.acked[key] = value
                self.in_flight = None
                self.count += 1


def verify(url, writers):
    """Every acknowledged write is there; an unanswered one may or may not be."""
    with requests.Session() as s:
        for w in writers:
            for key, value in list(w.acked.items()):
                r = s.get(f"{url}/v1/{key}", timeout=5)
                got = r.text if r.status_code == 200 else None
                allowed = {value}
                if w.in_flight and w.in_flight[0] == key:
                    allowed.add(w.in_flight[1])  # unanswered: either outcome is fine
                if got not in allowed:
                    short = lambda v: v if v is None else v[:40]  # noqa: E731
                    flight = w.in_flight and (w.in_flight[0], short(w.in_flight[1]))
                    raise AssertionError(f"{key}: got {short(got)!r}, acknowledged "
                                         f"{short(value)!r}, in flight {flight}")
                # What the node holds now is the truth the next cycle checks against (an
                # unanswered write may or may not have been applied).
                w.acked[key] = got


def test_fsync_always_loses_no_acknowledged_write_across_20_sigkills(tmp_path):
    rng = random.Random(int(os.environ.get("KVCACHE_CRASH_SEED", "7")))
    flags = ("--fsync", "always", *PERSIST_FLAGS)
    data_dir = tmp_path / "shared-data"
    acked = [{} for _ in range(4)]   # per writer: key -> value acknowledged
    in_flight = [None] * 4           # per writer: the op unanswered at the kill
    total = 0
    for cycle in range(20):
        node = start_node(tmp_path, flags, name=f"always{cycle}", data_dir=data_dir)
        _started.append(node)
        writers = []
        for i in range(4):
            w = Writer(node.url, f"w{i}", random.Random(rng.random()))
            w.acked, w.in_flight = acked[i], in_flight[i]
            writers.append(w)
        verify(node.url, writers)  # everything acknowledged before the last kill is back
        for w in writers:
            w.in_flight = None
            w.start()
        time.sleep(rng.uniform(0.1, 1.5))  # the crash comes at a random moment
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        for i, w in enumerate(writers):
            w.stop.set()
            w.join(10)
            acked[i], in_flight[i] = w.acked, w.in_flight
            total += w.count
    node = start_node(tmp_path, flags, name="always-final", data_dir=data_dir)
    _started.append(node)
    writers = []
    for i in range(4):
        w = Writer(node.url, f"w{i}", random.Random(0))
        w.acked, w.in_flight = acked[i], in_flight[i]
        writers.append(w)
    verify(node.url, writers)
    assert total > 200, f"only {total} writes were acknowledged in 20 cycles"
    # Snapshots (and the segment clean-up after them) raced with the kills too.
    snapshots = sum(n.log().count("Wrote snapshot") for n in _started)
    assert snapshots > 0, "no snapshot was taken during the crash loop"
    assert node.stop() == 0


def test_fsync_everysec_loses_at_most_the_last_seconds(tmp_path):
    data_dir = tmp_path / "shared-data"
    acked = {}  # key -> (value, time acknowledged)
    for cycle in range(4):
        node = start_node(tmp_path, ("--fsync", "everysec", *PERSIST_FLAGS),
                          name=f"everysec{cycle}", data_dir=data_dir)
        _started.append(node)
        # Writes acknowledged more than 2.5 s before the previous kill must all be back.
        with requests.Session() as s:
            for key, (value, _) in acked.items():
                r = s.get(f"{node.url}/v1/{key}", timeout=5)
                assert r.status_code == 200 and r.text == value, key
        fresh = {}
        deadline = time.monotonic() + 3.5
        with requests.Session() as s:
            i = 0
            while time.monotonic() < deadline:
                key, value = f"c{cycle}-{i}", f"value-{cycle}-{i}"
                assert s.put(f"{node.url}/v1/{key}", data=value, timeout=5).status_code == 201
                fresh[key] = (value, time.monotonic())
                i += 1
        killed_at = time.monotonic()
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        acked.update({k: v for k, v in fresh.items() if v[1] < killed_at - 2.5})
    assert len(acked) > 100


def test_sigterm_syncs_and_restart_keeps_everything(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    n = node_factory("--fsync", "no", data_dir=data_dir)
    with requests.Session() as s:
        for i in range(500):
            assert s.put(f"{n.url}/v1/k{i}", data=f"v{i}").status_code == 201
    assert n.stop() == 0
    n2 = node_factory("--fsync", "no", "--snapshot-on-shutdown", "true", data_dir=data_dir)
    assert requests.get(f"{n2.url}/v1/k499").text == "v499"
    assert n2.stop() == 0
    assert any(p.suffix == ".snap" for p in data_dir.iterdir())
    n3 = node_factory(data_dir=data_dir)
    metrics = requests.get(n3.url + "/metrics").text
    assert "kvcache_node_recovery_replayed_records 0" in metrics
    assert requests.get(f"{n3.url}/v1/k0").text == "v0"


def test_newer_data_format_is_refused_and_left_alone(tmp_path):
    import subprocess
    from conftest import NODE_BIN
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "FORMAT").write_text("kvcache-data-format 99\n")
    (data_dir / "log-00000000000000000001.seg").write_bytes(b"future bytes")
    result = subprocess.run([NODE_BIN, "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 3
    assert "newer kvcache" in result.stdout + result.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == ["FORMAT", "log-00000000000000000001.seg"]
    assert (data_dir / "log-00000000000000000001.seg").read_bytes() == b"future bytes"


def test_readiness_waits_for_recovery(tmp_path, node_factory):
    data_dir = tmp_path / "data"
    n = node_factory("--fsync", "no", data_dir=data_dir)
    with requests.Session() as s:
        for i in range(2000):
            s.put(f"{n.url}/v1/k{i}", data="v" * 100)
    assert n.stop() == 0
    n2 = node_factory(data_dir=data_dir, wait_ready=False)
    # Whenever the node answers ready, every key is there.
    wait_for(lambda: requests.get(n2.url + "/readyz").status_code == 200, what="ready")
    assert requests.get(f"{n2.url}/v1/k1999").status_code == 200
    metrics = requests.get(n2.url + "/metrics").text
    assert "kvcache_node_recovery_duration_seconds" in metrics
