"""Black-box tests of kvcache-node's HTTP API (DESIGN.md §3) against the real binary."""

import json
import socket
import threading
import time

import pytest
import requests

from conftest import wait_for


def raw_exchange(port, data: bytes, timeout=5.0, read_until_close=False) -> bytes:
    """Sends raw bytes on a fresh connection and returns what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if len(body) >= length:
                        break
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def assert_serving(node):
    assert node.proc.poll() is None, f"node died:\n{node.log()}"
    assert requests.get(node.url + "/healthz", timeout=5).status_code == 200


# --- compatibility with the original service -------------------------------------------------


def test_put_get_delete_flush_like_the_original(node, http):
    url = node.url + "/v1/greeting"
    r = http.put(url, data=b"hello")
    assert r.status_code == 201
    assert http.get(url).content == b"hello"
    assert http.put(url, data=b"again").status_code == 200
    assert http.get(url).content == b"again"
    assert http.delete(url).status_code == 204
    missing = http.get(url)
    assert missing.status_code == 404
    assert missing.json() == {"error": "key not found", "code": 404}
    assert http.delete(url).status_code == 404
    for k in ("a", "b", "c"):
        http.put(f"{node.url}/v1/{k}", data=k)
    r = http.delete(node.url + "/flush")
    assert r.status_code == 200 and r.json() == {"flushed": 3}
    assert http.get(node.url + "/v1/a").status_code == 404


def test_other_methods_get_405_with_allow(node, http):
    r = http.post(node.url + "/v1/k", data="x")
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD, PUT, DELETE"
    assert r.json()["code"] == 405
    assert http.get(node.url + "/flush").status_code == 405
    assert http.get(node.url + "/nowhere").status_code == 404


# --- beyond it --------------------------------------------------------------------------------


def test_head_etag_and_content_type(node, http):
    url = node.url + "/v1/doc"
    put = http.put(url, data=b'{"a": 1}', headers={"Content-Type": "application/json"})
    etag = put.headers["ETag"]
    got = http.get(url)
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["ETag"] == etag
    head = http.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(b'{"a": 1}'))  # what GET would send
    assert head.headers["ETag"] == etag
    assert http.get(url, headers={"If-None-Match": etag}).status_code == 304
    # No Content-Type given: served as text/plain.
    conn = socket.create_connection(("127.0.0.1", node.port))
    conn.sendall(b"PUT /v1/plain HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
    assert conn.recv(4096).startswith(b"HTTP/1.1 201")
    conn.close()
    assert http.get(node.url + "/v1/plain").headers["Content-Type"] == "text/plain"


def test_unknown_media_type_is_415(node):
    # Pistache parses Content-Type itself and refuses top-level types it does not know.
    r = requests.put(node.url + "/v1/odd", data=b"x", headers={"Content-Type": "foo/bar"})
    assert r.status_code == 415
    assert requests.get(node.url + "/v1/odd").status_code == 404


def test_conditional_writes(node, http):
    url = node.url + "/v1/counter"
    created = http.put(url, data="1", headers={"If-None-Match": "*"})
    assert created.status_code == 201
    assert http.put(url, data="x", headers={"If-None-Match": "*"}).status_code == 412
    etag = created.headers["ETag"]
    assert http.put(url, data="2", headers={"If-Match": etag}).status_code == 200
    stale = http.put(url, data="3", headers={"If-Match": etag})
    assert stale.status_code == 412 and "ETag" in stale.json()["error"]
    assert http.get(url).text == "2"
    assert http.put(url, data="4", headers={"If-Match": "nonsense"}).status_code == 400


def test_ttl_expires_and_bad_ttl_is_refused(node, http):
    url = node.url + "/v1/temp"
    assert http.put(url + "?ttl=1", data="soon gone").status_code == 201
    assert http.get(url).status_code == 200
    wait_for(lambda: http.get(url).status_code == 404, timeout=5, what="key to expire")
    for bad in ("0", "-1", "abc", "1.5"):
        r = http.put(f"{url}?ttl={bad}", data="x")
        assert r.status_code == 400, bad
        assert "ttl" in r.json()["error"]
    assert http.get(url).status_code == 404


def test_binary_keys_and_values(node, http):
    value = bytes(range(256))
    r = http.put(node.url + "/v1/%00%ff%2Fslash%20space", data=value)
    assert r.status_code == 201
    got = http.get(node.url + "/v1/%00%FF%2fslash%20space")
    assert got.content == value


def test_listing_with_prefix_limit_and_cursor(node, http):
    for i in range(25):
        http.put(f"{node.url}/v1/user:{i:02d}", data="x")
    http.put(node.url + "/v1/order:1", data="x")
    seen = []
    cursor = None
    while True:
        params = {"prefix": "user:", "limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = http.get(node.url + "/v1", params=params).json()
        seen += page["keys"]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert seen == [f"user:{i:02d}" for i in range(25)]
    assert http.get(node.url + "/v1", params={"limit": "x"}).status_code == 400


def test_auth_token(node_factory, tmp_path, http):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    n = node_factory("--auth-token-file", str(token_file))
    assert http.put(n.url + "/v1/k", data="v").status_code == 401
    r = http.get(n.url + "/v1/k", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    ok = {"Authorization": "Bearer s3cret"}
    assert http.put(n.url + "/v1/k", data="v", headers=ok).status_code == 201
    assert http.get(n.url + "/v1/k", headers=ok).text == "v"
    assert http.get(n.url + "/healthz").status_code == 200
    assert http.get(n.url + "/metrics").status_code == 200


def test_limits_answer_413_414_507(node_factory, http):
    n = node_factory("--max-key-bytes", "8", "--max-value-bytes", "100",
                     "--max-memory", "64Ki", "--eviction", "noeviction")
    assert http.put(n.url + "/v1/" + "k" * 9, data="x").status_code == 414
    r = http.put(n.url + "/v1/k", data="x" * 101)
    assert r.status_code == 413 and r.json()["code"] == 413
    written, code = 0, 201
    while code == 201 and written < 10000:
        code = http.put(f"{n.url}/v1/{written}", data="v" * 100).status_code
        written += code == 201
    assert code == 507
    assert http.get(n.url + "/v1/0").text == "v" * 100
    keys = float(next(line.split()[1] for line in http.get(n.url + "/metrics").text.splitlines()
                      if line.startswith("kvcache_node_keys ")))
    assert keys == written


def test_eviction_under_lru_keeps_serving(node_factory, http):
    n = node_factory("--max-memory", "256Ki", "--eviction", "lru")
    for i in range(2000):
        assert http.put(f"{n.url}/v1/{i}", data="v" * 500).status_code == 201
    metrics = http.get(n.url + "/metrics").text
    assert "kvcache_node_evictions_total" in metrics
    evictions = float(next(line.split()[1] for line in metrics.splitlines()
                           if line.startswith("kvcache_node_evictions_total ")))
    assert evictions > 1000
    assert http.get(f"{n.url}/v1/1999").status_code == 200


def test_metrics_families(node, http):
    http.put(node.url + "/v1/k", data="v")
    http.get(node.url + "/v1/k")
    http.get(node.url + "/v1/missing")
    text = http.get(node.url + "/metrics").text
    for family in ("kvcache_node_http_requests_total", "kvcache_node_http_request_duration_seconds",
                   "kvcache_node_keys", "kvcache_node_memory_bytes", "kvcache_node_hits_total",
                   "kvcache_node_misses_total", "kvcache_node_evictions_total",
                   "kvcache_node_expirations_total"):
        assert f"# TYPE {family} " in text, family
    assert 'kvcache_node_http_requests_total{code="201",method="PUT"} 1' in text
    assert "kvcache_node_hits_total 1" in text and "kvcache_node_misses_total 1" in text


# --- connections ------------------------------------------------------------------------------


def test_http11_keep_alive_without_connection_header(node):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        for _ in range(3):
            s.sendall(request)
            data = b""
            while not data.endswith(b"ok\n"):
                chunk = s.recv(4096)
                assert chunk, "server closed a keep-alive connection"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            assert b"Connection: Close" not in data


def test_connection_close_is_honoured(node):
    reply = raw_exchange(node.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in reply.lower()


def test_large_value_to_a_slow_reader_then_more_requests(node_factory, http):
    # A 6 MiB value cannot go out in one write: the rest is queued behind the socket, and the
    # next request on the same connection must be answered after it, intact.
    # (Pipelining is not covered: Pistache 0.0.5 drops a second request that arrives in the
    # same read as the first; see docs/api.md.)
    n = node_factory("--max-value-bytes", str(8 << 20))
    big = bytes(range(256)) * (6 * 4096)
    assert http.put(n.url + "/v1/big", data=big).status_code == 201
    http.put(n.url + "/v1/small", data=b"tail")

    def read_response(s, expected_body_len):
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < expected_body_len:
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return head, body

    with socket.create_connection(("127.0.0.1", n.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /v1/big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # let the server hit a full socket buffer before we read
        head, body = read_response(s, len(big))
        assert head.startswith(b"HTTP/1.1 200") and body == big
        s.sendall(b"GET /v1/small HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_response(s, 4)
        assert head.startswith(b"HTTP/1.1 200") and body == b"tail"


# --- bad input never crashes the node ---------------------------------------------------------


@pytest.mark.parametrize("payload", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /v1/k HTTP/9.9\r\n\r\n",
    b"\x00\x01\x02\xff\r\n\r\n",
    b"GET /v1/%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/%4 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/a/b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PUT /v1/k HTTP/1.1\r\nHost: x\r\nContent-Type: ;;;\r\nContent-Length: 1\r\n\r\nx",
    b"GET /v1?limit=99999999999999999999 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1?cursor=%%% HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_malformed_requests_get_4xx_or_close(node, payload):
    reply = raw_exchange(node.port, payload, timeout=3)
    code = status_of(reply)
    assert code == 0 or 400 <= code < 500, reply[:200]
    assert_serving(node)


@pytest.mark.parametrize("length", [b"-5", b"abc"])
def test_nonsense_content_length_never_crashes(node, length):
    # Pistache 0.0.5 parses Content-Length itself, before the node sees the request: "abc"
    # becomes 0 (an empty body) and "-5" a huge size its parser cannot allocate, answered 500
    # by Pistache's own catch-all. Known limitation (see docs/api.md); the node must stay up.
    reply = raw_exchange(node.port,
                         b"PUT /v1/k HTTP/1.1\r\nHost: x\r\nContent-Length: " + length +
                         b"\r\n\r\n", timeout=3)
    assert status_of(reply) in (0, 201, 400, 500)
    assert_serving(node)


def test_oversized_request_is_refused(node_factory):
    n = node_factory("--max-value-bytes", "1024")
    body = b"x" * (2 * 1024 * 1024)
    head = b"PUT /v1/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    try:
        reply = raw_exchange(n.port, head + body, timeout=5)
    except (BrokenPipeError, ConnectionResetError):
        reply = b""
    assert status_of(reply) in (0, 413)
    assert_serving(n)
    assert requests.get(n.url + "/v1/big").status_code == 404


def test_huge_headers_are_refused(node):
    head = b"GET /v1/k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * 1024 * 1024) + b"\r\n\r\n"
    try:
        reply = raw_exchange(node.port, head, timeout=5)
    except (BrokenPipeError, ConnectionResetError):
        reply = b""
    assert status_of(reply) in (0, 413, 431)
    assert_serving(node)


def test_truncated_body_loses_nothing(node, http):
    http.put(node.url + "/v1/k", data="original")
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(b"PUT /v1/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part")
    assert_serving(node)
    assert http.get(node.url + "/v1/k").text == "original"


def test_slow_client_gets_408_and_others_are_served(node_factory):
    n = node_factory("--header-timeout-seconds", "1")
    with socket.create_connection(("127.0.0.1", n.port), timeout=10) as slow:
        slow.sendall(b"GET /v1/k HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        assert requests.get(n.url + "/healthz", timeout=2).status_code == 200
        started = time.monotonic()
        reply = b""
        try:
            while True:
                chunk = slow.recv(4096)
                if not chunk:
                    break
                reply += chunk
                if b"\r\n\r\n" in reply:
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        assert time.monotonic() - started < 8
        assert status_of(reply) in (0, 408), reply
    assert_serving(n)


def test_many_idle_connections_do_not_block_service(node):
    sockets = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(200)]
    try:
        assert requests.get(node.url + "/healthz", timeout=5).status_code == 200
    finally:
        for s in sockets:
            s.close()
    assert_serving(node)


# --- lifecycle --------------------------------------------------------------------------------


def test_sigterm_exits_zero_with_clients_connected(node_factory):
    n = node_factory()
    stop = threading.Event()
    errors = []

    def client():
        with requests.Session() as s:
            i = 0
            while not stop.is_set():
                try:
                    s.put(f"{n.url}/v1/{i}", data="v", timeout=2)
                except requests.RequestException:
                    return  # the server going away is expected
                except Exception as e:  # noqa: BLE001 - report anything else
                    errors.append(e)
                    return
                i += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: requests.get(n.url + "/v1/50").status_code == 200, what="writes to flow")
    started = time.monotonic()
    code = n.stop(timeout=10)
    stop.set()
    for t in threads:
        t.join()
    assert code == 0, n.log()
    assert time.monotonic() - started < 5
    assert not errors
    assert "Received SIGTERM" in n.log()


def test_port_in_use_is_a_clear_error(node, tmp_path):
    import subprocess
    from conftest import NODE_BIN
    result = subprocess.run([NODE_BIN, "--listen", f"127.0.0.1:{node.port}",
                             "--data-dir", str(tmp_path / "d2")],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode != 0
    assert "Failed to start HTTP server" in result.stdout + result.stderr


def test_json_logs_are_one_object_per_line(node_factory, tmp_path):
    # A data directory whose name holds a quote, a backslash and a newline: every line it
    # appears in is still one JSON object, with the name intact in "msg".
    odd = tmp_path / 'we"ird\\dir\nname'
    n = node_factory("--log-format", "json", data_dir=odd)
    assert n.stop() == 0
    lines = [line for line in n.log().splitlines() if line.strip()]
    assert len(lines) >= 3
    for line in lines:
        record = json.loads(line)
        assert list(record.keys()) == ["ts", "level", "msg"], record
    assert any(json.loads(line)["msg"].startswith("Received SIGTERM") for line in lines)
    assert any(f"data_dir={odd}" in json.loads(line)["msg"] for line in lines)


def test_bad_flags_are_refused_with_a_message(tmp_path):
    import subprocess
    from conftest import NODE_BIN
    for args in (["--eviction", "random"], ["--max-memory", "12XB"], ["--listen", "nope"]):
        result = subprocess.run([NODE_BIN, *args, "--data-dir", str(tmp_path / "d")],
                                capture_output=True, text=True, timeout=10)
        assert result.returncode != 0, args
        assert (result.stdout + result.stderr).strip(), args
    # Sizes past 64 bits, with or without a suffix: exit 2 with the reason (an uncaught
    # std::out_of_range aborted the node before).
    for size in ("99999999999999999999", "99999999999Ti", "18446744073709551616"):
        result = subprocess.run([NODE_BIN, "--max-memory", size, "--data-dir", str(tmp_path / "d")],
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == 2, (size, result.returncode, result.stderr)
        assert "byte count out of range" in result.stdout + result.stderr, size
