"""Cluster mode from a static topology file: slots, one-hop forwarding, owner headers.

Three nodes on their own loopback addresses (127.77.X.1-3, one port), 3 shards x 1 node.
Replication, promotion and slot migration are not built yet.
"""

import json
import random
import signal

import pytest
import requests

from conftest import start_node


@pytest.fixture
def cluster(tmp_path):
    net = random.randrange(1, 250)
    port = random.randrange(20000, 60000)
    addrs = [f"127.77.{net}.{i + 1}:{port}" for i in range(3)]
    bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
    topology = {
        "cluster": "test", "epoch": 1,
        "shards": [{"id": i, "slots": [list(bounds[i])],
                    "primary": {"name": f"node-{i}", "addr": addrs[i]}, "replicas": []}
                   for i in range(3)],
    }
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(topology))
    nodes = []
    try:
        for i in range(3):
            n = start_node(tmp_path, ("--node-name", f"node-{i}", "--topology-file", str(path)),
                           name=f"node-{i}", listen=addrs[i])
            nodes.append(n)
        yield nodes, addrs
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
                n.proc.wait(10)


def key_owned_by(addr, owner, stem):
    """Writes keys stem0, stem1, ... through `addr` until one is owned by `owner`."""
    for i in range(1000):
        key = f"{stem}{i}"
        r = requests.put(f"http://{addr}/v1/{key}", data="1")
        if r.headers["X-KVCache-Owner"] == owner:
            return key
    raise AssertionError(f"no key owned by {owner}")


def metric(addr, name):
    for line in requests.get(f"http://{addr}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


def test_any_node_serves_any_key_and_shards_split_the_keys(cluster):
    nodes, addrs = cluster
    keys = [f"key-{i}" for i in range(300)]
    with requests.Session() as s:
        for i, key in enumerate(keys):
            r = s.put(f"http://{addrs[i % 3]}/v1/{key}", data=f"value-{i}")
            assert r.status_code == 201, r.text
            assert r.headers["X-KVCache-Owner"].startswith("node-")
            assert "ETag" in r.headers
        for addr in addrs:
            for i, key in enumerate(keys):
                r = s.get(f"http://{addr}/v1/{key}")
                assert r.status_code == 200 and r.text == f"value-{i}", (addr, key)
    held = [metric(a, "kvcache_node_keys") for a in addrs]
    assert sum(held) == len(keys)
    for count in held:
        assert 0.2 * len(keys) < count < 0.47 * len(keys), held


def test_hash_tags_keep_keys_together(cluster):
    _, addrs = cluster
    owners = {requests.put(f"http://{addrs[0]}/v1/%7Buser42%7D.{field}", data="x")
              .headers["X-KVCache-Owner"] for field in ("name", "email", "cart", "orders")}
    assert len(owners) == 1


def test_conditional_writes_and_errors_pass_through_the_hop(cluster):
    _, addrs = cluster
    with requests.Session() as s:
        # A key owned by node-2, asked about through node-0.
        key = key_owned_by(addrs[2], "node-2", "k")
        via = f"http://{addrs[0]}/v1/{key}"
        etag = s.get(via).headers["ETag"]
        assert s.put(via, data="2", headers={"If-Match": etag}).status_code == 200
        assert s.put(via, data="3", headers={"If-Match": etag}).status_code == 412
        assert s.put(via, data="x", headers={"If-None-Match": "*"}).status_code == 412
        assert s.get(via).text == "2"
        assert s.head(via).headers["Content-Length"] == "1"
        assert s.delete(via).status_code == 204
        missing = s.get(via)
        assert missing.status_code == 404 and missing.json()["code"] == 404


def test_owner_unreachable_is_503_with_retry_after(cluster):
    nodes, addrs = cluster
    key = key_owned_by(addrs[1], "node-1", "u")
    nodes[1].proc.send_signal(signal.SIGKILL)
    nodes[1].proc.wait()
    r = requests.get(f"http://{addrs[0]}/v1/{key}", timeout=10)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.headers["X-KVCache-Owner"] == "node-1"
    assert "unreachable" in r.json()["error"]
    # A cluster-wide request that cannot reach every shard says so.
    listing = requests.get(f"http://{addrs[0]}/v1", timeout=10)
    assert listing.status_code == 503 and listing.headers["Retry-After"] == "1"
    flush = requests.delete(f"http://{addrs[0]}/flush", timeout=10)
    assert flush.status_code == 503 and "some shards" in flush.json()["error"]


def test_a_forwarded_request_is_never_forwarded_again(cluster):
    _, addrs = cluster
    key = next(k for k in (f"h{i}" for i in range(1000))
               if requests.put(f"http://{addrs[0]}/v1/{k}", data="1").headers["X-KVCache-Owner"]
               != "node-0")
    r = requests.get(f"http://{addrs[0]}/v1/{key}", headers={"X-KVCache-Hop": "1"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"


def test_bad_topology_file_is_refused(tmp_path):
    import subprocess
    from conftest import NODE_BIN
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cluster": "c", "epoch": 1, "shards": [
        {"id": 0, "slots": [[0, 100]], "primary": {"name": "a", "addr": "127.0.0.1:1"}}]}))
    result = subprocess.run([NODE_BIN, "--listen", "127.0.0.1:0", "--topology-file", str(bad),
                             "--data-dir", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "slot 101 has no owner" in result.stdout + result.stderr


def test_admin_api_installs_and_persists_newer_topologies(tmp_path, node_factory):
    token = tmp_path / "cluster-token"
    token.write_text("t0ken\n")
    data_dir = tmp_path / "data"
    n = node_factory("--node-name", "solo", "--cluster-token-file", str(token), data_dir=data_dir)
    url = n.url + "/internal/topology"
    auth = {"Authorization": "Bearer t0ken"}

    def doc(epoch, addr):
        return {"cluster": "c", "epoch": epoch, "shards": [
            {"id": 0, "slots": [[0, 16383]], "primary": {"name": "solo", "addr": addr},
             "replicas": []}]}

    assert requests.put(url, json=doc(2, "a:1")).status_code == 401
    assert requests.put(url, json=doc(2, "a:1"),
                        headers={"Authorization": "Bearer nope"}).status_code == 401
    assert requests.get(url, headers=auth).status_code == 404  # nothing installed yet
    r = requests.put(url, json=doc(2, "a:1"), headers=auth)
    assert r.status_code == 200 and r.json() == {"epoch": 2}
    stale = requests.put(url, json=doc(2, "b:1"), headers=auth)
    assert stale.status_code == 409 and "not newer" in stale.json()["error"]
    bad = requests.put(url, data="{", headers=auth)
    assert bad.status_code == 400
    assert requests.put(url, json=doc(3, "c:1"), headers=auth).status_code == 200
    # Keys keep working, served locally: this node owns every slot.
    assert requests.put(n.url + "/v1/k", data="v").headers["X-KVCache-Owner"] == "solo"
    assert n.stop() == 0
    again = node_factory("--node-name", "solo", "--cluster-token-file", str(token),
                         data_dir=data_dir)
    got = requests.get(again.url + "/internal/topology", headers=auth).json()
    assert got["epoch"] == 3 and got["shards"][0]["primary"]["addr"] == "c:1"


def test_admin_api_is_off_without_a_cluster_token(node):
    r = requests.get(node.url + "/internal/topology")
    assert r.status_code == 403 and "--cluster-token-file" in r.json()["error"]


def test_listing_and_flush_are_cluster_wide(cluster):
    _, addrs = cluster
    keys = sorted(f"item-{i:03d}" for i in range(120))
    with requests.Session() as s:
        for i, key in enumerate(keys):
            assert s.put(f"http://{addrs[i % 3]}/v1/{key}", data="x").status_code == 201
        for addr in addrs:
            seen, cursor = [], None
            while True:
                params = {"prefix": "item-", "limit": 25}
                if cursor:
                    params["cursor"] = cursor
                page = s.get(f"http://{addr}/v1", params=params).json()
                assert page["count"] == len(page["keys"]) <= 25
                seen += page["keys"]
                cursor = page["cursor"]
                if cursor is None:
                    break
            assert seen == keys, addr
        assert s.get(f"http://{addrs[0]}/v1", params={"limit": "0"}).status_code == 400
        flushed = s.delete(f"http://{addrs[1]}/flush")
        assert flushed.status_code == 200 and flushed.json() == {"flushed": 120}
        assert sum(metric(a, "kvcache_node_keys") for a in addrs) == 0
        assert s.get(f"http://{addrs[2]}/v1").json()["keys"] == []


def test_a_forwarded_request_that_reaches_another_node_is_refused(tmp_path):
    """Pods that come back with new IPs: a node's DNS answer for the owner can still give the
    address another node holds now. node-0 finds node-1 at node-2's address; node-2 holds an
    older topology in which it owns node-1's slots itself. The forwarded PUT names
    node-1 in its hop header, so node-2 refuses it (421) instead of storing it: the client gets
    503 + Retry-After and node-2 holds nothing."""
    net = random.randrange(1, 250)
    port = random.randrange(20000, 60000)
    addrs = [f"127.78.{net}.{i + 1}:{port}" for i in range(3)]
    bounds = [(0, 5460), (5461, 10922), (10923, 16383)]

    def topology(owners):
        return {"cluster": "test", "epoch": 1,
                "shards": [{"id": i, "slots": [list(bounds[i])],
                            "primary": {"name": name, "addr": addr}, "replicas": []}
                           for i, (name, addr) in enumerate(owners)]}
    # node-0's view: node-1 and node-2 swapped addresses (node-1 is not running).
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(topology([("node-0", addrs[0]), ("node-1", addrs[2]),
                                          ("node-2", addrs[1])])))
    # node-2's older view: it owns shard 1 itself.
    old = tmp_path / "old.json"
    old.write_text(json.dumps(topology([("node-0", addrs[0]), ("node-2", addrs[2]),
                                        ("node-1", addrs[1])])))
    nodes = []
    try:
        nodes.append(start_node(tmp_path, ("--node-name", "node-0", "--topology-file", str(stale)),
                                name="node-0", listen=addrs[0]))
        nodes.append(start_node(tmp_path, ("--node-name", "node-2", "--topology-file", str(old)),
                                name="node-2", listen=addrs[2]))
        for i in range(1000):
            key = f"m{i}"
            r = requests.put(f"http://{addrs[0]}/v1/{key}", data="v", timeout=10)
            if r.headers.get("X-KVCache-Owner") == "node-1":
                break
        assert r.headers.get("X-KVCache-Owner") == "node-1", "no key of shard 1 in 1000"
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.headers["Retry-After"] == "1"
        assert "another node answered" in r.json()["error"], r.text
        assert requests.get(f"http://{addrs[2]}/v1/{key}", timeout=10).status_code == 404
        # The hop header names the node meant; a node of another name refuses at once.
        r = requests.get(f"http://{addrs[2]}/v1/{key}", headers={"X-KVCache-Hop": "node-1"})
        assert r.status_code == 421 and "this node is node-2, not node-1" in r.json()["error"]
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
                n.proc.wait(10)
