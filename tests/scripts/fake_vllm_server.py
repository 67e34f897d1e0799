"""Stand-in for ``python -m vllm.entrypoints.openai.api_server`` in lifecycle tests.

Started through a wrapper given to ``VllmServer(python=...)``, so it receives
``-m vllm.entrypoints.openai.api_server --model MODE ... --port N``. MODE says
how to behave:

* ``ok``: serve ``GET /health`` and ``POST /v1/completions`` (echo) on 127.0.0.1;
* ``exit3``: print 100 numbered lines, exit with code 3;
* ``hang``: never listen;
* ``family``: like ``ok``, plus a grandchild process (pid written to the log);
* ``stubborn``: like ``ok`` but ignore SIGTERM.

It always prints ``VLLM_PLUGINS=<repr of the variable, or None>`` first.
"""

import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompts = body["prompt"]
        # Reverse order on the wire: the client must sort by index.
        choices = [
            {"index": i, "text": f"{body['model']}|{p}|{body['max_tokens']}"}
            for i, p in reversed(list(enumerate(prompts)))
        ]
        data = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m")
    parser.add_argument("--model")
    parser.add_argument("--served-model-name")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args, _ = parser.parse_known_args()
    print(f"VLLM_PLUGINS={os.environ.get('VLLM_PLUGINS')!r}", flush=True)
    print(f"ARGV={sys.argv[1:]!r}", flush=True)
    mode = args.model
    if mode == "exit3":
        for i in range(1, 101):
            print(f"line {i}", flush=True)
        sys.exit(3)
    if mode == "hang":
        while True:
            time.sleep(1)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "family":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"GRANDCHILD={child.pid}", flush=True)
    server = http.server.HTTPServer((args.host, args.port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
