#!/usr/bin/python3
"""Official Python client (`kubernetes`, Debian python3-kubernetes or PyPI): CRUD + watch on
ConfigMaps against the cluster of $KUBECONFIG.

    KUBECONFIG=... /usr/bin/python3 tests/localk8s/conformance/python_client_test.py

Uses the namespace $CONFORMANCE_NAMESPACE if set (the Go suite creates and deletes it), otherwise
creates conf-py-<random> and deletes it. Exits non-zero on any failure. Also runnable with
`python3 -m unittest` / pytest (one test case).
"""
import os
import queue
import random
import string
import sys
import threading
import time
import unittest

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

TIMEOUT = 60


def log(*a):
    print("[python-client]", *a, flush=True)


class ConfigMapCrudWatch(unittest.TestCase):
    def test_crud_watch(self):
        config.load_kube_config()
        v1 = client.CoreV1Api()
        log("kubernetes client", getattr(client, "__version__", "?"))
        ns = os.environ.get("CONFORMANCE_NAMESPACE")
        own_ns = not ns
        if own_ns:
            ns = "conf-py-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=6))
            v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        try:
            self._run(v1, ns)
        finally:
            if own_ns:
                v1.delete_namespace(ns)

    def _run(self, v1, ns):
        name, sel = "py-client-cm", "conformance=python-client"
        initial = v1.list_namespaced_config_map(ns, label_selector=sel)
        events = queue.Queue()
        w = watch.Watch()

        def watcher():
            try:
                for ev in w.stream(v1.list_namespaced_config_map, ns, label_selector=sel,
                                   resource_version=initial.metadata.resource_version,
                                   timeout_seconds=TIMEOUT):
                    obj = ev["object"]
                    events.put("%s:%s:%s" % (ev["type"], obj.metadata.name, (obj.data or {}).get("k", "")))
                    if ev["type"] == "DELETED":
                        return
            except Exception as e:  # surfaced below
                events.put("ERROR:%r" % (e,))

        th = threading.Thread(target=watcher, daemon=True)
        th.start()

        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, labels={"conformance": "python-client"}),
            data={"k": "v1"})
        created = v1.create_namespaced_config_map(ns, body)
        self.assertEqual(created.data["k"], "v1")
        log("created", name, "uid", created.metadata.uid)

        got = v1.read_namespaced_config_map(name, ns)
        self.assertEqual(got.metadata.uid, created.metadata.uid)
        log("get ok, resourceVersion", got.metadata.resource_version)

        items = v1.list_namespaced_config_map(ns, label_selector=sel).items
        self.assertEqual([i.metadata.name for i in items], [name])
        log("list ok:", len(items), "item(s)")

        patched = v1.patch_namespaced_config_map(name, ns, {"data": {"k": "v2", "extra": "x"}})
        self.assertEqual(patched.data, {"k": "v2", "extra": "x"})
        log("patch ok:", patched.data)

        got.data = {"k": "v3"}  # stale resourceVersion: optimistic concurrency must refuse it
        with self.assertRaises(ApiException) as cm:
            v1.replace_namespaced_config_map(name, ns, got)
        self.assertEqual(cm.exception.status, 409)
        log("replace with a stale resourceVersion -> 409 Conflict")

        v1.delete_namespaced_config_map(name, ns)
        with self.assertRaises(ApiException) as cm:
            v1.read_namespaced_config_map(name, ns)
        self.assertEqual(cm.exception.status, 404)
        log("delete ok (get -> 404)")

        seen = []
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and not any(e.startswith(("DELETED", "ERROR")) for e in seen):
            try:
                seen.append(events.get(timeout=1))
            except queue.Empty:
                pass
        w.stop()
        log("watch events:", " ".join(seen))
        self.assertEqual(seen, ["ADDED:%s:v1" % name, "MODIFIED:%s:v2" % name, "DELETED:%s:v2" % name])
        log("PASS")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
