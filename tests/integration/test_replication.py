"""Replication, promotion and fencing, black box against the real kvcache-node binary.

Nodes listen on 127.0.1.1-60 (this file's range), one random port per test. The tests play the
operator: they promote a replica (POST /internal/promote) and push topologies
(PUT /internal/topology) with the cluster token.
"""

import json
import random
import signal
import threading
import time

import pytest
import requests

from conftest import start_node, wait_for

TOKEN = "repl-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def topology(epoch, shards):
    """shards: [(slots, (primary_name, addr), [(replica_name, addr), ...]), ...]"""
    return {"cluster": "repl", "epoch": epoch,
            "shards": [{"id": i, "slots": [list(s) for s in slots],
                        "primary": {"name": p[0], "addr": p[1]},
                        "replicas": [{"name": n, "addr": a} for n, a in replicas]}
                       for i, (slots, p, replicas) in enumerate(shards)]}


class Cluster:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.port = random.randrange(20000, 60000)
        self.nodes = {}  # name -> Node
        (tmp_path / "token").write_text(TOKEN + "\n")

    def addr(self, host):
        return f"127.0.1.{host}:{self.port}"

    def start(self, name, addr, topo, *extra, wait_ready=False):
        path = self.tmp / f"topology-{name}.json"
        path.write_text(json.dumps(topo))
        data_dir = self.tmp / name / "data"
        (self.tmp / name / "port").unlink(missing_ok=True)  # a restart writes it anew
        node = start_node(self.tmp, ("--node-name", name, "--topology-file", str(path),
                                     "--cluster-token-file", str(self.tmp / "token"), *extra),
                          name=name, listen=addr, wait_ready=wait_ready, data_dir=data_dir)
        self.nodes[name] = node
        return node

    def stop_all(self):
        for n in self.nodes.values():
            if n.proc.poll() is None:
                try:
                    n.proc.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
                n.proc.send_signal(signal.SIGTERM)
                try:
                    n.proc.wait(10)
                except Exception:
                    n.proc.kill()
                    n.proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


def status(addr):
    r = requests.get(f"http://{addr}/internal/status", headers=AUTH, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def push(addr, topo):
    r = requests.put(f"http://{addr}/internal/topology", headers=AUTH, json=topo, timeout=5)
    assert r.status_code == 200, r.text


def promote(addr, epoch):
    r = requests.post(f"http://{addr}/internal/promote", headers=AUTH, json={"epoch": epoch},
                      timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "primary"
    return r.json()


def metric(addr, name):
    for line in requests.get(f"http://{addr}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


def ready(addr):
    try:
        return requests.get(f"http://{addr}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def etags(session, addr, keys, replica=False):
    """key -> ETag (None if absent) as `addr` serves it, from its own copy when replica."""
    out = {}
    for k in keys:
        r = session.get(f"http://{addr}/v1/{k}" + ("?replica=ok" if replica else ""), timeout=5)
        assert r.status_code in (200, 404), r.text
        out[k] = r.headers.get("ETag") if r.status_code == 200 else None
    return out


def test_three_shards_of_two_serve_every_key_everywhere_and_replicas_match(cluster):
    bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
    members = [((f"s{i}-p", cluster.addr(2 * i + 1)), (f"s{i}-r", cluster.addr(2 * i + 2)))
               for i in range(3)]
    topo = topology(1, [([bounds[i]], members[i][0], [members[i][1]]) for i in range(3)])
    for p, r in members:
        cluster.start(p[0], p[1], topo)
        cluster.start(r[0], r[1], topo)
    addrs = [m[1] for pair in members for m in pair]
    wait_for(lambda: all(ready(a) for a in addrs), timeout=30, what="all nodes ready")

    keys = [f"key-{i}" for i in range(300)]
    with requests.Session() as s:
        for i, k in enumerate(keys):
            r = s.put(f"http://{addrs[i % len(addrs)]}/v1/{k}", data=f"value-{i}", timeout=5)
            assert r.status_code == 201, r.text
        for a in addrs:
            for i, k in enumerate(keys):
                r = s.get(f"http://{a}/v1/{k}", timeout=5)
                assert r.status_code == 200 and r.text == f"value-{i}", (a, k, r.status_code)

        primaries = [p[1] for p, _ in members]
        counts = [metric(a, "kvcache_node_keys") for a in primaries]
        assert sum(counts) == len(keys)
        for c in counts:
            assert 0.2 * len(keys) < c < 0.47 * len(keys), counts

        for (p, r), c in zip(members, counts):
            wait_for(lambda: metric(r[1], "kvcache_node_keys") == c and
                     metric(r[1], "kvcache_node_replication_lag_records") == 0,
                     timeout=20, what=f"replica {r[0]} caught up")
            assert ready(r[1])
            assert metric(r[1], 'kvcache_node_role{role="replica"}') == 1
            assert metric(p[1], 'kvcache_node_role{role="primary"}') == 1
            assert metric(p[1], "kvcache_node_replication_connected_replicas") == 1
            st = status(r[1])
            assert st["role"] == "replica" and st["appliedOffset"] == status(p[1])["appliedOffset"]
        # Same data on each replica as on its primary, read from the replica's own copy.
        for p, r in members:
            mine = [k for k in keys
                    if s.get(f"http://{p[1]}/v1/{k}", timeout=5).headers["X-KVCache-Owner"] == p[0]]
            assert etags(s, r[1], mine, replica=True) == etags(s, p[1], mine)

        # A replica refuses direct writes by forwarding them to its primary.
        r = s.put(f"http://{members[0][1][1]}/v1/key-0", data="new", timeout=5)
        assert r.status_code in (200, 201) and r.headers["X-KVCache-Owner"] in (
            members[0][0][0], members[1][0][0], members[2][0][0])
        # Deletes and flush replicate too.
        assert s.delete(f"http://{addrs[0]}/v1/key-1", timeout=5).status_code == 204
        assert s.delete(f"http://{addrs[1]}/flush", timeout=5).json()["flushed"] == len(keys) - 1
        for _, r in members:
            wait_for(lambda: metric(r[1], "kvcache_node_keys") == 0, timeout=20,
                     what="flush replicated")


class Writer:
    """Background writers: unique key per write, remembering which were acknowledged (2xx)."""

    def __init__(self, target, threads=2):
        self.target = target  # a list holding the address to write to (the test switches it)
        self.acked = {}
        self.failed = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(t,)) for t in range(threads)]

    def run(self, t):
        i = 0
        with requests.Session() as s:
            while not self.stop.is_set():
                key, value = f"w{t}-{i}", f"value-{t}-{i}"
                i += 1
                try:
                    r = s.put(f"http://{self.target[0]}/v1/{key}", data=value, timeout=3)
                    ok = r.status_code in (200, 201)
                except requests.RequestException:
                    ok = False
                with self.lock:
                    if ok:
                        self.acked[key] = value
                    else:
                        self.failed += 1
                if not ok:
                    time.sleep(0.02)

    def count(self):
        with self.lock:
            return len(self.acked)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def test_sigkill_primary_under_sync_load_promote_replica_no_acknowledged_write_lost(cluster):
    a, b = cluster.addr(11), cluster.addr(12)
    sync = ("--replication", "sync", "--min-acks", "1", "--replication-timeout-ms", "1000")
    topo1 = topology(1, [([(0, 16383)], ("a", a), [("b", b)])])
    topo2 = topology(2, [([(0, 16383)], ("b", b), [("a", a)])])
    node_a = cluster.start("a", a, topo1, *sync)
    cluster.start("b", b, topo1, *sync)
    wait_for(lambda: ready(a) and ready(b), timeout=20, what="a and b ready")

    target = [a]
    with Writer(target) as w:
        wait_for(lambda: w.count() >= 100, timeout=30, what="100 acknowledged writes")
        node_a.proc.send_signal(signal.SIGKILL)
        node_a.proc.wait()
        acked_before = w.count()
        # The operator: promote the most caught-up replica, then push the new epoch.
        assert status(b)["appliedOffset"] > 0
        promote(b, 2)
        push(b, topo2)
        target[0] = b
        # Restart the old primary from its data directory; it still believes epoch 1.
        node_a = cluster.start("a", a, topo1, *sync)
        push(a, topo2)
        wait_for(lambda: status(a)["role"] == "replica" and ready(a), timeout=30,
                 what="old primary demoted and caught up")
        wait_for(lambda: w.count() >= acked_before + 100, timeout=30,
                 what="writes acknowledged by the new primary")
    acked = dict(w.acked)

    with requests.Session() as s:
        for key, value in acked.items():
            r = s.get(f"http://{b}/v1/{key}", timeout=5)
            assert r.status_code == 200 and r.text == value, f"acknowledged write {key} lost"
        st_a, st_b = status(a), status(b)
        assert st_a["role"] == "replica" and st_a["epoch"] == 2 and st_a["fenceEpoch"] == 2
        assert st_b["role"] == "primary"
        wait_for(lambda: metric(a, "kvcache_node_keys") == metric(b, "kvcache_node_keys"),
                 timeout=20, what="same key count")
        keys = list(acked)
        assert etags(s, a, keys, replica=True) == etags(s, b, keys)
    assert metric(a, "kvcache_node_replication_full_syncs_total") >= 1


@pytest.mark.parametrize("mode", [("--replication", "sync", "--replication-timeout-ms", "500"),
                                  ("--replication", "async", "--primary-lease-ms", "500")],
                         ids=["sync", "async-lease"])
def test_partitioned_old_primary_cannot_acknowledge_once_a_newer_epoch_exists(cluster, mode):
    p, r = cluster.addr(21), cluster.addr(22)
    nowhere, nowhere2 = cluster.addr(23), cluster.addr(24)  # nothing listens there
    topo1 = topology(1, [([(0, 16383)], ("p", p), [("r", r)])])
    cluster.start("p", p, topo1, *mode)
    cluster.start("r", r, topo1, *mode)
    wait_for(lambda: ready(p) and ready(r), timeout=20, what="p and r ready")
    with requests.Session() as s:
        assert s.put(f"http://{p}/v1/before", data="1", timeout=5).status_code == 201
        wait_for(lambda: s.get(f"http://{r}/v1/before?replica=ok", timeout=5).status_code == 200,
                 timeout=10, what="replicated")
        # Cut p and r apart both ways: each one's view sends to an address where nothing
        # listens.
        push(p, topology(2, [([(0, 16383)], ("p", p), [("r", nowhere)])]))
        if "--primary-lease-ms" in mode:
            # The operator's failover timeout, which must exceed the lease: only then may it
            # promote (the lease is what bounds an async primary, see docs/cluster.md).
            time.sleep(0.6)
        # The operator promotes r in a newer epoch; p never hears of it.
        promote(r, 3)
        push(r, topology(3, [([(0, 16383)], ("r", r), [("p", nowhere2)])]))
        # p must not acknowledge a write now.
        for i in range(3):
            got = s.put(f"http://{p}/v1/partitioned-{i}", data="x", timeout=5)
            assert got.status_code == 503, got.text
            assert got.headers.get("Retry-After")
        assert status(p)["role"] == "primary"  # it really never heard of epoch 3
        # Healing: p learns of epoch 4, steps down and resyncs from r: the unacknowledged
        # writes it applied while cut off are gone.
        healed = topology(4, [([(0, 16383)], ("r", r), [("p", p)])])
        push(r, healed)
        push(p, healed)
        wait_for(lambda: status(p)["role"] == "replica" and ready(p), timeout=20,
                 what="p demoted and resynced")
        for i in range(3):
            assert s.get(f"http://{p}/v1/partitioned-{i}?replica=ok", timeout=5).status_code == 404
            assert s.get(f"http://{r}/v1/partitioned-{i}", timeout=5).status_code == 404
        assert s.get(f"http://{p}/v1/before?replica=ok", timeout=5).text == "1"


def test_old_primary_demotes_when_its_replica_refuses_an_older_epoch(cluster):
    p, r = cluster.addr(31), cluster.addr(32)
    topo1 = topology(1, [([(0, 16383)], ("p", p), [("r", r)])])
    cluster.start("p", p, topo1)  # async, no lease: only the refusal can stop it
    cluster.start("r", r, topo1)
    wait_for(lambda: ready(p) and ready(r), timeout=20, what="p and r ready")
    with requests.Session() as s:
        assert s.put(f"http://{p}/v1/k", data="1", timeout=5).status_code == 201
        promote(r, 2)
        # p's next batch (a heartbeat at the latest) is refused with epoch 2: p steps down.
        wait_for(lambda: status(p)["role"] == "replica", timeout=10, what="p demoted")
        assert status(p)["fenceEpoch"] == 2
        got = s.put(f"http://{p}/v1/k2", data="2", timeout=5)
        assert got.status_code == 503 and got.headers.get("Retry-After"), got.text
        # A forwarded write stamped with an older epoch is refused by the new primary (409),
        # which the forwarding node turns into 503 + Retry-After for its client.
        hop = s.put(f"http://{r}/v1/k3", data="3", timeout=5,
                    headers={"X-KVCache-Hop": "1", "X-KVCache-Epoch": "1"})
        assert hop.status_code == 409 and hop.headers["X-KVCache-Epoch"] == "2", hop.text
        # A stale promotion is refused too.
        stale = requests.post(f"http://{p}/internal/promote", headers=AUTH, json={"epoch": 2},
                              timeout=5)
        assert stale.status_code == 409


def test_restarted_replica_resumes_from_the_backlog_without_a_full_sync(cluster):
    p, r = cluster.addr(41), cluster.addr(42)
    topo = topology(1, [([(0, 16383)], ("p", p), [("r", r)])])
    cluster.start("p", p, topo)
    node_r = cluster.start("r", r, topo)
    wait_for(lambda: ready(p) and ready(r), timeout=20, what="p and r ready")
    with requests.Session() as s:
        for i in range(50):
            assert s.put(f"http://{p}/v1/a{i}", data=str(i), timeout=5).status_code == 201
        wait_for(lambda: (node_r.data_dir / "replication.json").exists() and
                 json.loads((node_r.data_dir / "replication.json").read_text())["offset"]
                 == status(p)["appliedOffset"],
                 timeout=20, what="replica saved its resume point")
        syncs = metric(p, "kvcache_node_replication_full_syncs_total")
        assert node_r.stop() == 0
        # Writes while it is away stay in the primary's backlog.
        for i in range(50, 80):
            assert s.put(f"http://{p}/v1/a{i}", data=str(i), timeout=5).status_code == 201
        assert s.delete(f"http://{p}/v1/a0", timeout=5).status_code == 204
        cluster.start("r", r, topo)
        wait_for(lambda: ready(r) and status(r)["appliedOffset"] == status(p)["appliedOffset"],
                 timeout=20, what="replica caught up")
        assert metric(p, "kvcache_node_replication_full_syncs_total") == syncs
        keys = [f"a{i}" for i in range(80)]
        assert etags(s, r, keys, replica=True) == etags(s, p, keys)
        assert "Resuming replication" in cluster.nodes["r"].log()


def test_large_values_replicate_by_full_sync_and_by_stream(cluster):
    p, r = cluster.addr(51), cluster.addr(52)
    topo = topology(1, [([(0, 16383)], ("p", p), [("r", r)])])
    cluster.start("p", p, topo)
    big = b"x" * (1 << 20)  # the default largest value
    with requests.Session() as s:
        for i in range(3):
            assert s.put(f"http://{p}/v1/big{i}", data=big, timeout=10).status_code == 201
        for i in range(200):
            assert s.put(f"http://{p}/v1/small{i}", data=b"y" * 3000, timeout=5).status_code == 201
        cluster.start("r", r, topo)  # joins late: full sync
        wait_for(lambda: ready(r), timeout=30, what="replica synced")
        assert s.put(f"http://{p}/v1/big-streamed", data=big, timeout=10).status_code == 201
        wait_for(lambda: status(r)["appliedOffset"] == status(p)["appliedOffset"], timeout=20,
                 what="stream caught up")
        keys = [f"big{i}" for i in range(3)] + [f"small{i}" for i in range(200)] + ["big-streamed"]
        assert etags(s, r, keys, replica=True) == etags(s, p, keys)
        assert None not in etags(s, r, keys, replica=True).values()
