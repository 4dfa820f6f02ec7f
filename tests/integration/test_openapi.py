"""The OpenAPI document is valid and describes exactly the routes the node serves.

Three sources must agree:
  * the document (cache-node/server/docs/openapi.json, served by the node at /openapi.json),
  * SERVER_ROUTES below, copied from NodeApi::Handle() in cache-node/server/node_api.cc,
  * the running node (every listed route answers; every other method answers 405 + Allow).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO / "cache-node" / "server" / "docs" / "openapi.json"
BUILD_DIR = Path(os.environ.get("KVCACHE_BUILD_DIR", REPO / "build"))
VENV = Path(os.environ.get("KVCACHE_TEST_VENV", BUILD_DIR / "venv"))

# Every (method, path) the node answers, from NodeApi::Handle() and HandleKey() in
# cache-node/server/node_api.cc (and the static asset table it falls through to). Update this
# list together with that code and with openapi.json.
SERVER_ROUTES = {
    # HandleKey(): "/v1/" + one segment.
    ("GET", "/v1/{key}"), ("HEAD", "/v1/{key}"), ("PUT", "/v1/{key}"), ("DELETE", "/v1/{key}"),
    # HandleList(): "/v1" (and "/v1/").
    ("GET", "/v1"), ("HEAD", "/v1"),
    # HandleFlush().
    ("DELETE", "/flush"),
    ("GET", "/healthz"), ("HEAD", "/healthz"),
    ("GET", "/readyz"), ("HEAD", "/readyz"),
    ("GET", "/metrics"), ("HEAD", "/metrics"),
    # HandleStatic(): the documented static assets.
    ("GET", "/openapi.json"), ("HEAD", "/openapi.json"),
    ("GET", "/docs"), ("HEAD", "/docs"),
}

# Served but deliberately not in the document: an alias of a documented path, and the files
# the /docs page loads. Each answers GET and HEAD only.
UNDOCUMENTED_ALIASES = {
    "/v1/": "/v1",
    "/docs/": "/docs",
}
DOCS_ASSETS = {
    "/docs/swagger-ui.css": "text/css",
    "/docs/swagger-ui-bundle.js": "javascript",
}

HTTP_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS")
OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
NO_SUCH_ROUTE = "no such route"


def missing_tool(reason):
    """Skips locally; fails under CI (CI=true), where `make deps` must have installed it."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def load_spec():
    return json.loads(SPEC_PATH.read_text())


def spec_routes(spec):
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in OPENAPI_METHODS
    }


def with_implied_head(routes):
    # HEAD is GET without the body (RFC 9110 9.3.2); the document lists HEAD only where it
    # says something GET does not (/v1/{key}) and states that HEAD works wherever GET does.
    return routes | {("HEAD", path) for (method, path) in routes if method == "GET"}


def concrete(path, key="openapi-route-check"):
    return path.replace("{key}", key)


def is_no_such_route(response):
    return response.status_code == 404 and NO_SUCH_ROUTE in response.text


# --- the document itself -------------------------------------------------------------------


def resolve_ref(spec, ref):
    assert ref.startswith("#/"), f"only local $refs are used, got {ref}"
    node = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def walk(value, visit):
    visit(value)
    if isinstance(value, dict):
        for child in value.values():
            walk(child, visit)
    elif isinstance(value, list):
        for child in value:
            walk(child, visit)


def test_spec_is_structurally_valid_openapi_3():
    spec = load_spec()
    assert re.fullmatch(r"3\.0\.\d+", spec["openapi"])
    assert spec["info"]["title"] and spec["info"]["version"]
    assert spec["servers"] == [{"url": "/", "description": spec["servers"][0].get("description")}]

    def check_ref(value):
        if isinstance(value, dict) and "$ref" in value:
            resolve_ref(spec, value["$ref"])

    walk(spec, check_ref)

    operation_ids = []
    for path, item in spec["paths"].items():
        assert path.startswith("/")
        templated = set(re.findall(r"{([^}]+)}", path))
        path_params = [
            resolve_ref(spec, p["$ref"]) if "$ref" in p else p for p in item.get("parameters", [])
        ]
        for method in item:
            if method == "parameters":
                continue
            assert method in OPENAPI_METHODS, f"{path}: unknown key {method}"
            op = item[method]
            operation_ids.append(op["operationId"])
            params = path_params + [
                resolve_ref(spec, p["$ref"]) if "$ref" in p else p
                for p in op.get("parameters", [])
            ]
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == templated, f"{method} {path}: path parameters {in_path}"
            for p in params:
                assert p["in"] in ("path", "query", "header", "cookie")
                assert "schema" in p or "content" in p
                if p["in"] == "path":
                    assert p["required"] is True
            assert op["responses"], f"{method} {path} has no responses"
            for code, response in op["responses"].items():
                assert code == "default" or re.fullmatch(r"[1-5]\d\d", code), code
                response = resolve_ref(spec, response["$ref"]) if "$ref" in response else response
                assert response["description"], f"{method} {path} {code}: no description"
    assert len(operation_ids) == len(set(operation_ids)), "duplicate operationId"

    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": schemes["bearerAuth"]["description"]}
    # Auth is optional: the empty requirement comes first.
    assert spec["security"][0] == {}


def test_spec_validates_with_openapi_spec_validator():
    """The full OpenAPI 3.0 schema check, with openapi-spec-validator from build/venv."""
    validator = VENV / "bin" / "openapi-spec-validator"
    if not validator.exists():
        missing_tool(f"{validator} missing: run tests/integration/setup_venv.sh")
    result = subprocess.run([str(validator), str(SPEC_PATH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_documented_routes_equal_served_routes():
    documented = spec_routes(load_spec())
    assert with_implied_head(documented) == SERVER_ROUTES
    # HEAD is written out only where it is not simply GET without a body.
    assert {p for (m, p) in documented if m == "HEAD"} == {"/v1/{key}"}


# --- against the running node --------------------------------------------------------------


def test_node_serves_this_document(node, http):
    r = http.get(node.url + "/openapi.json")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == load_spec()


def test_every_documented_operation_answers_as_documented(node, http):
    spec = load_spec()
    # In an order where each operation has what it needs: the key exists for GET/HEAD/DELETE.
    order = {"PUT": 0, "GET": 1, "HEAD": 2, "DELETE": 3}
    routes = sorted(spec_routes(spec), key=lambda r: (r[1], order.get(r[0], 9)))
    for method, path in routes:
        r = http.request(method, node.url + concrete(path), data=b"v" if method == "PUT" else None)
        assert not is_no_such_route(r), f"{method} {path}: {r.status_code} {r.text}"
        assert r.status_code != 405, f"{method} {path}: 405 {r.text}"
        documented = spec["paths"][path][method.lower()]["responses"]
        assert str(r.status_code) in documented, f"{method} {path}: undocumented {r.status_code}"
        assert 200 <= r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"


def test_served_routes_are_exactly_the_listed_ones(node, http):
    """Checks SERVER_ROUTES against the node: listed methods answer, all others get 405."""
    http.put(node.url + concrete("/v1/{key}"), data=b"v").raise_for_status()
    paths = {path for (_, path) in SERVER_ROUTES}
    for path in paths:
        allowed = {m for (m, p) in SERVER_ROUTES if p == path}
        for method in HTTP_METHODS:
            url = node.url + concrete(path)
            r = http.request(method, url, data=b"v" if method in ("PUT", "POST", "PATCH") else None)
            if method in allowed:
                assert not is_no_such_route(r) and r.status_code != 405, (
                    f"{method} {path}: {r.status_code} {r.text}")
                if method == "DELETE" and "{key}" in path:
                    http.put(url, data=b"v").raise_for_status()
            else:
                assert r.status_code == 405, f"{method} {path}: {r.status_code}, want 405"
                assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed, path
                if method != "HEAD":
                    assert r.json()["code"] == 405


def test_aliases_and_docs_assets_are_served(node, http):
    for alias, target in UNDOCUMENTED_ALIASES.items():
        a, b = http.get(node.url + alias), http.get(node.url + target)
        assert a.status_code == b.status_code == 200, alias
        assert a.headers["Content-Type"] == b.headers["Content-Type"], alias
        assert http.put(node.url + alias, data=b"x").status_code == 405, alias
    for path, content_type in DOCS_ASSETS.items():
        r = http.get(node.url + path)
        assert r.status_code == 200, path
        assert content_type in r.headers["Content-Type"], (path, r.headers["Content-Type"])
        assert len(r.content) > 1000, path
        assert http.head(node.url + path).content == b"", path


def test_unknown_paths_are_404_json(node, http):
    for path in ("/", "/v2/x", "/docs/nope.js", "/healthz/x", "/flush/x", "/openapi.yaml"):
        r = http.get(node.url + path)
        assert is_no_such_route(r), f"{path}: {r.status_code} {r.text}"
        assert r.json() == {"error": r.json()["error"], "code": 404}


def test_error_answers_are_documented_json_errors(node_factory, tmp_path, http):
    """Each limit and condition answers with a status the document lists for that operation,
    as a JSON Error ({"error": str, "code": status}); 401 also carries WWW-Authenticate."""
    spec = load_spec()
    token = tmp_path / "token"
    token.write_text("secret")
    node = node_factory("--max-key-bytes", "32", "--max-value-bytes", "256",
                        "--max-memory", "4096", "--eviction", "noeviction",
                        "--auth-token-file", str(token))
    auth = {"Authorization": "Bearer secret"}
    key_url = node.url + "/v1/k"

    def check(response, method, path, status):
        assert response.status_code == status, (method, path, response.text)
        responses = spec["paths"][path][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {path}: {status} undocumented"
        if method == "HEAD":
            return
        assert response.headers["Content-Type"] == "application/json", (method, path)
        body = response.json()
        assert set(body) == {"error", "code"} and body["code"] == status, body
        assert isinstance(body["error"], str) and body["error"], body

    for method, path in (("GET", "/v1/{key}"), ("HEAD", "/v1/{key}"), ("PUT", "/v1/{key}"),
                         ("DELETE", "/v1/{key}"), ("GET", "/v1"), ("DELETE", "/flush")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = http.request(method, node.url + concrete(path, "k"), headers=headers)
            check(r, method, path, 401)
            assert r.headers["WWW-Authenticate"] == "Bearer"
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert http.get(node.url + path).status_code == 200, f"{path} must not need the token"

    check(http.get(key_url, headers=auth), "GET", "/v1/{key}", 404)
    check(http.delete(key_url, headers=auth), "DELETE", "/v1/{key}", 404)
    check(http.put(key_url, params={"ttl": "0"}, headers=auth), "PUT", "/v1/{key}", 400)
    check(http.get(node.url + "/v1", params={"limit": "0"}, headers=auth), "GET", "/v1", 400)
    check(http.get(node.url + "/v1", params={"cursor": "zz"}, headers=auth), "GET", "/v1", 400)
    check(http.put(key_url, data=b"x" * 257, headers=auth), "PUT", "/v1/{key}", 413)
    check(http.get(node.url + "/v1/" + "k" * 33, headers=auth), "GET", "/v1/{key}", 414)
    check(http.put(key_url, headers={**auth, "If-Match": "nope"}), "PUT", "/v1/{key}", 400)

    created = http.put(key_url, data=b"v", headers=auth)
    assert created.status_code == 201
    etag = created.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{16}"', etag)
    check(http.put(key_url, data=b"w", headers={**auth, "If-None-Match": "*"}),
          "PUT", "/v1/{key}", 412)
    not_modified = http.get(key_url, headers={**auth, "If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.headers["ETag"] == etag
    assert http.put(key_url, data=b"w", headers={**auth, "If-Match": etag}).status_code == 200

    # Fill the memory: under noeviction the write that does not fit is refused with 507.
    for i in range(200):
        r = http.put(f"{node.url}/v1/fill{i}", data=b"f" * 200, headers=auth)
        if r.status_code != 201:
            break
    check(r, "PUT", "/v1/{key}", 507)
    assert http.delete(node.url + "/flush", headers=auth).json()["flushed"] >= 2
