#!/usr/bin/env python3
"""Reporting helper for bench/run.sh (standard library only).

  report.py --make-meta OUT.json            run metadata from BENCH_* environment variables
  report.py --one RESULTS.jsonl             one-line summary of the last wrk result (progress)
  report.py --redis-csv FILE.csv            redis-benchmark --csv output -> JSON lines on stdout
  report.py --meta META.json [--elapsed S] [--node-log F] RESULTS.jsonl
                                            the Markdown report on stdout

RESULTS.jsonl holds one JSON object per line with "scenario" and "server"; wrk lines carry what
bench/kv.lua's done() printed (latencies in microseconds).
"""
import argparse
import csv
import json
import os
import sys

SERVERS = ["kvcache-node", "nginx", "webdis"]
SCENARIOS = [
    ("get_hit", "GET hit: random key of the prefilled ones (keep-alive)"),
    ("get_miss", "GET miss: key never written -> 404"),
    ("put", "PUT: random prefilled key, value overwritten"),
    ("mixed", "80% GET hit / 20% PUT"),
    ("get_hit_newconn", "GET hit, new connection per request (Connection: close)"),
]
# In these scenarios a 4xx/5xx is a failure. In get_miss every answer must be a 404, which
# wrk counts as a "status error", so there the unexpected ones are requests - status errors.
EXPECT_404 = {"get_miss"}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def fmt_rps(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_ms(us):
    if us is None:
        return "—"
    ms = us / 1000.0
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def unexpected(row):
    """Answers that were not what the scenario expects (non-2xx, or non-404 for misses)."""
    if row.get("failed"):
        return None
    if row["scenario"] in EXPECT_404:
        return row["requests"] - row["err_status"]
    return row["err_status"]


def socket_errors(row):
    if row.get("failed"):
        return None
    return {k: row[f"err_{k}"] for k in ("connect", "read", "write", "timeout") if row[f"err_{k}"]}


def other_pct(r):
    """CPU used during the run by neither the server nor wrk, in % of one core (None: unknown)."""
    if r is None or r.get("failed") or "busy_cpu_s" not in r or not r.get("duration_us"):
        return None
    o = max(0.0, r["busy_cpu_s"] - r["server_cpu_s"] - r["client_cpu_s"])
    return 100 * o / (r["duration_us"] / 1e6)


NOISY_PCT = 10


def one(path):
    rows = [r for r in load(path) if "rps" in r or r.get("failed")]
    if not rows:
        return
    r = rows[-1]
    if r.get("failed"):
        print(f"  {r['scenario']:<16} {r['server']:<13} FAILED (no result from wrk)")
        return
    errs = socket_errors(r)
    bad = unexpected(r)
    extra = ""
    if bad:
        extra += f"  UNEXPECTED STATUS: {bad}"
    if errs:
        extra += "  socket errors: " + ", ".join(f"{k} {v}" for k, v in errs.items())
    o = other_pct(r)
    if o is not None and o > NOISY_PCT:
        extra += f"  (other processes used {o:.0f}% of a core: noisy)"
    print(f"  {r['scenario']:<16} {r['server']:<13} {r['rps']:>10,.0f} req/s"
          f"  p50 {fmt_ms(r['lat_p50_us']):>9}  p99 {fmt_ms(r['lat_p99_us']):>9}{extra}")


def redis_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header = rows[0]
    for r in rows[1:]:
        if len(r) != len(header):
            continue
        d = dict(zip(header, r))
        try:
            out = {
                "scenario": "redis_benchmark",
                "server": "redis-benchmark " + d["test"],
                "rps": float(d["rps"]),
                "lat_p50_us": float(d.get("p50_latency_ms", "nan")) * 1000,
                "lat_p99_us": float(d.get("p99_latency_ms", "nan")) * 1000,
            }
        except (KeyError, ValueError):
            continue
        print(json.dumps(out))


def make_meta(out):
    keys = ["date", "command", "mode", "node_binary", "node_version", "git", "cpus", "ncpu",
            "pinned", "server_threads", "wrk", "repeat", "keys", "value_size", "mem_keys",
            "packages", "load_before"]
    meta = {k: os.environ.get("BENCH_" + k.upper(), "") for k in keys}
    with open(out, "w") as f:
        json.dump(meta, f, indent=2)


def report(path, meta_path, elapsed, node_log):
    rows = load(path)
    meta = json.load(open(meta_path)) if meta_path else {}
    runs = {}
    for r in rows:
        if r["scenario"] in dict(SCENARIOS) and ("rps" in r or r.get("failed")):
            runs.setdefault((r["scenario"], r["server"]), []).append(r)
    # With REPEAT > 1: the run with the median req/s stands for the pair.
    wrk = {}
    for k, rs in runs.items():
        ok = sorted((r for r in rs if not r.get("failed")), key=lambda r: r["rps"])
        wrk[k] = ok[(len(ok) - 1) // 2] if ok else rs[0]
    repeat = max((len(v) for v in runs.values()), default=1)
    out = []
    w = out.append
    w(f"# kvcache-node side-by-side benchmark — {meta.get('date', '')}")
    w("")
    w(f"Command: `{meta.get('command', '')}`")
    w("")
    w("| setting | value |")
    w("|---|---|")
    for k, label in [("node_version", "node"), ("node_binary", "node binary"), ("git", "checkout"), ("cpus", "CPUs"),
                     ("pinned", "pinned"), ("server_threads", "server threads / workers"),
                     ("wrk", "wrk"), ("repeat", "runs per scenario and server"),
                     ("keys", "keys (HTTP scenarios)"),
                     ("value_size", "value bytes"), ("mem_keys", "keys (memory test)"),
                     ("packages", "Debian packages"),
                     ("load_before", "load average at start")]:
        if (k == "mem_keys" and meta.get("mode") == "http") or \
                (k in ("wrk", "keys", "repeat") and meta.get("mode") == "memory"):
            continue
        if meta.get(k, "") != "":
            w(f"| {label} | {meta[k]} |")
    if elapsed:
        w(f"| run time | {elapsed} s |")
    w("")

    present = [s for s in SCENARIOS if any((s[0], srv) in wrk for srv in SERVERS)]
    if present:
        def rps(s, srv):
            r = wrk.get((s, srv))
            return None if r is None or r.get("failed") else r["rps"]

        def p99(s, srv):
            r = wrk.get((s, srv))
            return None if r is None or r.get("failed") else r["lat_p99_us"]

        w("## Throughput and tail latency (wrk)")
        w("")
        w("Ratios are node / peer, taken in this run: req/s above 1 means the node serves more; "
          "p99 above 1 means the node's tail is slower."
          + (f" Each figure is the median-req/s run of {repeat}." if repeat > 1 else ""))
        w("")
        w("| scenario | node req/s | nginx req/s | webdis req/s | **req/s node/nginx** "
          "| **req/s node/webdis** | node p99 | nginx p99 | webdis p99 | p99 node/nginx "
          "| p99 node/webdis |")
        w("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        noisy = False
        for s, _ in present:
            n, x, d = rps(s, "kvcache-node"), rps(s, "nginx"), rps(s, "webdis")
            worst = max((other_pct(wrk.get((s, srv))) or 0) for srv in SERVERS)
            mark = ""
            if worst > NOISY_PCT:
                mark, noisy = " ⚠", True
            pn, px, pd = p99(s, "kvcache-node"), p99(s, "nginx"), p99(s, "webdis")
            w(f"| {s}{mark} | {fmt_rps(n)} | {fmt_rps(x)} | {fmt_rps(d)} | **{ratio(n, x)}** "
              f"| **{ratio(n, d)}** | {fmt_ms(pn)} | {fmt_ms(px)} | {fmt_ms(pd)} "
              f"| {ratio(pn, px)} | {ratio(pn, pd)} |")
        w("")
        if noisy:
            w(f"⚠ = in at least one of the row's runs, other processes on the machine used more "
              f"than {NOISY_PCT}% of a core (see the CPU table below): treat that row's figures "
              "with care, or run again with REPEAT=3 on a quiet machine.")
            w("")
        for s, desc in present:
            w(f"- `{s}`: {desc}")
        w("")

        w("### Errors seen by wrk")
        w("")
        w("Unexpected = answers other than 2xx (other than 404 in get_miss). "
          "Socket errors are wrk's connect/read/write/timeout counts.")
        w("")
        w("| scenario | server | requests | unexpected status | socket errors | p50 | max |")
        w("|---|---|--:|--:|---|--:|--:|")
        for s, _ in present:
            for srv in SERVERS:
                for r in runs.get((s, srv), []):
                    if r.get("failed"):
                        w(f"| {s} | {srv} | — | wrk failed | — | — | — |")
                        continue
                    errs = socket_errors(r)
                    es = ", ".join(f"{k} {v:,}" for k, v in errs.items()) if errs else "0"
                    w(f"| {s} | {srv} | {r['requests']:,} | {unexpected(r):,} | {es} "
                      f"| {fmt_ms(r['lat_p50_us'])} | {fmt_ms(r['lat_max_us'])} |")
        w("")

        if any("server_cpu_s" in r for r in wrk.values()):
            w("### CPU per request (server side) and machine noise")
            w("")
            w("Server CPU = user+sys time of the server's processes during the run (webdis counts "
              "webdis + its redis-server; nginx counts master + workers) / requests. It is less "
              "sensitive to client/server CPU sharing than req/s (irq/softirq time is not in it). "
              "Other CPU = user+system+steal time of all CPUs during the run minus server minus "
              "wrk, as a share of one core: above ~10% something else on the machine (or the "
              "hypervisor) was competing and that run's req/s and p99 are suspect. Cores the "
              "server got = its CPU time / run time (at most 2 here, 1 with PIN=1).")
            w("")
            w("| scenario | node µs/req | nginx µs/req | webdis+redis µs/req | node/nginx "
              "| node/webdis | wrk µs/req (node run) | cores the server got (node / nginx / webdis) "
              "| other CPU % of a core (node / nginx / webdis) |")
            w("|---|--:|--:|--:|--:|--:|--:|--:|--:|")

            def cores(r):
                if r is None or r.get("failed") or "server_cpu_s" not in r:
                    return "—"
                return f"{r['server_cpu_s'] / (r['duration_us'] / 1e6):.2f}"


            def cpu_us(r):
                if r is None or r.get("failed") or "server_cpu_s" not in r or not r["requests"]:
                    return None
                return r["server_cpu_s"] * 1e6 / r["requests"]

            def other(r):
                o = other_pct(r)
                return "—" if o is None else f"{o:.0f}"

            for s, _ in present:
                rn, rx, rd = (wrk.get((s, srv)) for srv in SERVERS)
                n, x, d = cpu_us(rn), cpu_us(rx), cpu_us(rd)
                fm = lambda v: "—" if v is None else f"{v:.1f}"
                cl = (rn["client_cpu_s"] * 1e6 / rn["requests"]
                      if rn and not rn.get("failed") and rn.get("requests") else None)
                w(f"| {s} | {fm(n)} | {fm(x)} | {fm(d)} | {ratio(n, x)} | {ratio(n, d)} "
                  f"| {fm(cl)} | {cores(rn)} / {cores(rx)} / {cores(rd)} "
                  f"| {other(rn)} / {other(rx)} / {other(rd)} |")
            w("")

    rb = [r for r in rows if r["scenario"] == "redis_benchmark"]
    if rb:
        w("## redis-benchmark (reference: RESP, not HTTP)")
        w("")
        w("| test | req/s | p50 | p99 | node req/s / this |")
        w("|---|--:|--:|--:|--:|")
        for r in rb:
            test = r["server"].split()[-1]
            node_scen = {"GET": "get_hit", "SET": "put"}.get(test)
            nr = wrk.get((node_scen, "kvcache-node"))
            nrps = nr["rps"] if nr and not nr.get("failed") else None
            w(f"| {test} | {fmt_rps(r['rps'])} | {fmt_ms(r['lat_p50_us'])} "
              f"| {fmt_ms(r['lat_p99_us'])} | {ratio(nrps, r['rps'])} ({node_scen}) |")
        w("")

    mem = {r["server"]: r for r in rows if r["scenario"] == "memory"}
    if mem:
        w(f"## Memory per key ({meta.get('mem_keys', '?')} keys, "
          f"{meta.get('value_size', '?')}-byte values, keys `key1`..)")
        w("")
        w("Bytes per key = (VmRSS after loading - VmRSS before) / keys. "
          "\"Self-accounted\" is the server's own figure: the node's `kvcache_node_memory_bytes`, "
          "redis's `used_memory` (whole dataset), divided by keys.")
        w("")
        w("| server | keys | VmRSS before | VmRSS after | **bytes/key (RSS)** "
          "| self-accounted bytes/key | load time | load rate |")
        w("|---|--:|--:|--:|--:|--:|--:|--:|")
        per = {}
        for srv in ["kvcache-node", "redis-server"]:
            r = mem.get(srv)
            if not r:
                continue
            keys = max(int(r["keys"]), 1)
            per[srv] = (r["rss_after_kb"] - r["rss_before_kb"]) * 1024 / keys
            acct = r.get("accounted_bytes", 0) / keys
            secs = float(r["load_seconds"])
            rate = f"{keys / secs:,.0f}/s" if secs > 0 else "—"
            w(f"| {srv} | {keys:,} | {r['rss_before_kb'] / 1024:.1f} MiB "
              f"| {r['rss_after_kb'] / 1024:.1f} MiB | **{per[srv]:.0f}** | {acct:.0f} "
              f"| {secs:.1f} s | {rate} |")
        w("")
        if len(per) == 2:
            w(f"node / redis bytes per key: **{per['kvcache-node'] / per['redis-server']:.2f}** "
              "(below 1: the node uses less memory per key).")
            w("")
        w("The node is loaded over HTTP by bench/prefill.lua (wrk, one thread, keep-alive), "
          "redis by `redis-cli --pipe`; load rates are not comparable with each other.")
        w("")

    other = [r for r in rows if r["scenario"] in ("sanity", "prefill", "node_after")]
    if other:
        w("## Checks")
        w("")
        for r in other:
            if r["scenario"] == "sanity":
                w(f"- sanity {r['server']}: GET key1 -> `{r['hit']}` (status, bytes), "
                  f"GET miss1 -> `{r['miss']}`")
            elif r["scenario"] == "prefill":
                w(f"- prefill: {r['keys']:,} keys PUT into the node in {r['seconds']} s")
            elif r["scenario"] == "node_after":
                w(f"- node after the HTTP scenarios: {r['keys']:,} keys; "
                  f"{r['log_warn_error_lines']} warning/error log lines")
        if node_log and os.path.exists(node_log) and os.path.getsize(node_log):
            w("")
            w("Node warning/error log lines (first 20):")
            w("")
            w("```")
            w(open(node_log).read().rstrip())
            w("```")
        w("")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="?")
    ap.add_argument("--make-meta")
    ap.add_argument("--one")
    ap.add_argument("--redis-csv")
    ap.add_argument("--meta")
    ap.add_argument("--elapsed")
    ap.add_argument("--node-log")
    a = ap.parse_args()
    if a.make_meta:
        make_meta(a.make_meta)
    elif a.one:
        one(a.one)
    elif a.redis_csv:
        redis_csv(a.redis_csv)
    elif a.results:
        report(a.results, a.meta, a.elapsed, a.node_log)
    else:
        ap.error("nothing to do")


if __name__ == "__main__":
    sys.exit(main())
