"""Fixtures of the e2e tests: one localk8s cluster (3 nodes) and one helm-installed operator
for the whole session, a namespace per test. The session's teardown stops localk8s and fails
the run if the host is not clean (an lk8s-* netns left, ip_forward changed).

run_e2e.sh holds /tmp/localk8s.lock around pytest; running pytest directly needs the same
(`flock /tmp/localk8s.lock python3 -m pytest tests/e2e`).
"""

import itertools
import os
import shutil
import tempfile
import time

import pytest

import e2elib
from e2elib import LocalK8s, log

_ns_counter = itertools.count(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer than the e2e tier's budget (run with -m slow)")
    config.addinivalue_line("markers", "session_end: runs after every other test of the session "
                            "(it judges what they did, e.g. from the audit log)")


def pytest_collection_modifyitems(config, items):
    # Explicit, whatever the file names: tests marked session_end go last, in their order.
    last = [i for i in items if i.get_closest_marker("session_end")]
    items[:] = [i for i in items if not i.get_closest_marker("session_end")] + last


def pytest_deselected(items):
    if items:
        stash = items[0].config.stash
        stash[e2elib.DESELECTED] = stash.get(e2elib.DESELECTED, []) + list(items)


@pytest.fixture(scope="session")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("localk8s needs root")
    for tool in (e2elib.BIN / "localk8s", e2elib.BIN / "kubectl", e2elib.BIN / "helm",
                 e2elib.OWN_BIN / "kvcache-node", e2elib.OWN_BIN / "kvcache-operator"):
        if not tool.exists():
            pytest.skip(f"{tool} missing (make build; make localk8s)")
    assert not e2elib.lk8s_netns(), f"lk8s-* netns present before start: {e2elib.lk8s_netns()}"
    forward_before = e2elib.ip_forward()
    state = tempfile.mkdtemp(prefix="kvc-e2e-py.")
    lk = LocalK8s(state, nodes=3)
    keep = os.environ.get("E2E_KEEP_STATE") == "1"
    try:
        t0 = time.monotonic()
        log(f"starting localk8s (3 nodes) in {state}")
        lk.start()
        log(f"localk8s ready in {time.monotonic() - t0:.1f}s; helm install {e2elib.RELEASE}")
        t1 = time.monotonic()
        # Resync every 10 s, so that the zero-writes test sees several periodic reconciles.
        try:
            lk.install_operator(extra=("--set", "extraArgs[0]=--resync-seconds=10"))
        except AssertionError:
            dump_install(lk)
            raise
        log(f"operator installed and ready in {time.monotonic() - t1:.1f}s")
        yield lk
    finally:
        if os.environ.get("E2E_DUMP") == "1" or keep:
            log(f"state dir kept: {state}")
        rc = lk.stop()
        log(f"localk8s stopped (exit {rc})")
        left = e2elib.lk8s_netns()
        forward_after = e2elib.ip_forward()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
        assert rc == 0, f"localk8s exited {rc} on SIGINT"
        assert not left, f"lk8s-* netns left behind: {left}"
        assert forward_after == forward_before, \
            f"ip_forward {forward_before} before, {forward_after} after"
        log("host clean: no lk8s-* netns, ip_forward restored")


@pytest.fixture
def namespace(cluster, request):
    """A fresh namespace for one test (deleted afterwards without waiting)."""
    name = f"e2e-{next(_ns_counter)}-{request.node.name.removeprefix('test_')[:30]}"
    name = name.replace("_", "-").lower().rstrip("-")
    cluster.kubectl("create", "namespace", name)
    yield name
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def dump_install(cluster):
    """What a failed operator install leaves for diagnosis: nodes, every pod, the operator's
    pods described, events, and its log."""
    for args in (("get", "nodes", "-o", "wide"),
                 ("get", "pods", "-A", "-o", "wide"),
                 ("describe", "pods", "-n", e2elib.OPERATOR_NS),
                 ("get", "events", "-A", "--sort-by=.lastTimestamp"),
                 ("logs", "-n", e2elib.OPERATOR_NS, "deployment/" + e2elib.RELEASE,
                  "--tail=80")):
        out = cluster.kubectl(*args, check=False)
        log(f"---- kubectl {' '.join(args)}\n{out.stdout}{out.stderr}")


def dump(cluster, ns):
    """What a failed test leaves for diagnosis: objects, events, operator log tail."""
    for args in (("get", "kvc,sts,pods,svc,pvc", "-n", ns, "-o", "wide"),
                 ("get", "events", "-n", ns, "--sort-by=.lastTimestamp"),
                 ("get", "kvc", "-n", ns, "-o", "yaml"),
                 ("logs", "-n", e2elib.OPERATOR_NS, "deployment/" + e2elib.RELEASE,
                  "--tail=60")):
        out = cluster.kubectl(*args, check=False)
        log(f"---- kubectl {' '.join(args)}\n{out.stdout}{out.stderr}")
