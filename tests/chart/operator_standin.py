#!/usr/bin/python3
"""A stand-in for kvcache-operator, for developing the chart before the operator exists:
serves 200 on /healthz, /readyz and /metrics at --metrics-listen and does nothing else.
cluster_test.sh maps the operator image to it only when CHART_OPERATOR_STANDIN=1; the
readiness steps then prove the chart's Deployment, probes, Service and helm test hook, not the
operator."""
import argparse
import http.server
import signal
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--metrics-listen", default="0.0.0.0:8080")
args, _ = parser.parse_known_args()
host, port = args.metrics_listen.rsplit(":", 1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/healthz", "/readyz", "/metrics"):
            body = b"# operator stand-in\n" if self.path == "/metrics" else b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)


server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
