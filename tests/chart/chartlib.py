"""Helpers shared by the chart tests: paths, running helm, parsing renders.

HELM (default build/bin/helm) is the helm built by localk8s from helm.sh/helm/v3.
"""

import os
import pathlib
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kvcache-operator"
CACHE_CHART = ROOT / "charts" / "kvcache"
CRD_SOURCE = ROOT / "crds" / "kvcache.io_kvcaches.yaml"
CRD_COPY = CHART / "files" / "crds" / "kvcache.io_kvcaches.yaml"
RULES = CHART / "rules" / "kvcache.rules.yaml"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
CACHE_SCENARIOS = sorted(p.name for p in (CACHE_CHART / "ci").glob("*-values.yaml"))
HELM = os.environ.get("HELM", str(ROOT / "build" / "bin" / "helm"))


def run(args, check=True, input=None, timeout=300, env=None):
    """Runs a command; returns CompletedProcess with text stdout/stderr. Raises with both
    streams in the message when check and the command fails."""
    proc = subprocess.run(args, input=input, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def helm(*args, check=True, **kw):
    return run([HELM, *map(str, args)], check=check, **kw)


def render(chart=CHART, values=None, sets=(), release="kvc", namespace="kvcache-system",
           extra=()):
    """helm template; returns (text, [documents]) with documents parsed, empty ones dropped."""
    args = ["template", release, chart, "--namespace", namespace, *extra]
    if values:
        args += ["-f", values]
    for s in sets:
        args += ["--set", s]
    text = helm(*args).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    return text, docs


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
