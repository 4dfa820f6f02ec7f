"""The Grafana dashboards are what generate.py writes, and well-formed for current Grafana.

No Grafana runs here (Debian does not package it), so this checks what Grafana relies on:
schemaVersion, the templated datasource on every panel and query, the variables, unique panel
ids and refIds, and a grid without overlaps. Their PromQL is checked against a real Prometheus
by test_prometheus_k8s.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

DASHBOARDS = Path(__file__).resolve().parents[2] / "charts" / "kvcache-operator" / "dashboards"
FILES = sorted(DASHBOARDS.glob("*.json"))
DS = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = {
    "kvcache-data-plane.json": ["datasource", "namespace", "cluster", "shard", "instance"],
    "kvcache-operator.json": ["datasource", "instance", "namespace", "cluster"],
}


def test_committed_json_is_what_generate_writes():
    r = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_both_dashboards_exist():
    assert [f.name for f in FILES] == sorted(VARIABLES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_shape(path):
    board = json.loads(path.read_text())
    assert board["schemaVersion"] >= 39
    assert board["uid"] == path.stem and len(board["uid"]) <= 40
    variables = board["templating"]["list"]
    assert [v["name"] for v in variables] == VARIABLES[path.name]
    assert variables[0]["type"] == "datasource" and variables[0]["query"] == "prometheus"
    for v in variables[1:]:
        assert v["datasource"] == DS and v["multi"] and v["includeAll"] and v["allValue"] == ".*"

    ids, cells = set(), set()
    for panel in board["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS and panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == DS and t["expr"].strip(), panel["title"]
