#!/usr/bin/env python3
"""A stand-in for an e-mail HTTP API, for the example workers and their test.

    python3 examples/stub_server.py [--port 8025] [--port-file FILE] [--slow SECONDS]

POST /send with a JSON body (the job's args) and an Idempotency-Key header
(the job's id).  What it answers depends on the body's "mode":

    ok      200 {"message_id": "msg-<key>"}
    flaky   503 the first time it sees the key, then as ok
    drop    closes the connection without an answer the first time it sees
            the key (what a crash or a network cut looks like), then as ok
    slow    as ok, after --slow seconds (1 by default) or once released by
            GET /release?key=<key>, whichever comes first
    bad     400 {"error": "invalid recipient"} (a permanent error)

Like a real idempotent API it sends nothing twice: a key it already answered
200 gets the same answer again with "duplicate": true.  A request without
an Idempotency-Key gets 400.

GET /log answers, as JSON, every request it got, in order:
[{"key": "17", "mode": "flaky", "to": "...", "status": 503}, ...], status
null while a request is being answered (a slow one) and "dropped" for a
dropped one.  Standard library only.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

lock = threading.Lock()
log = []  # every request, in arrival order
seen = set()  # keys that got their first request
sent = {}  # key -> the 200 answer given for it
releases = {}  # key -> threading.Event: a slow request's answer may go


def release(key):
    with lock:
        return releases.setdefault(key, threading.Event())


class Handler(BaseHTTPRequestHandler):
    server_version = "jobq-example-stub/1"

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/release":
            key = parse_qs(url.query).get("key", [""])[0]
            release(key).set()
            return self.answer(200, {"released": key})
        if url.path != "/log":
            return self.answer(404, {"error": "not found"})
        with lock:
            return self.answer(200, log)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            args = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            args = {}
        if not isinstance(args, dict):
            args = {}
        key = self.headers.get("Idempotency-Key")
        mode = args.get("mode", "ok")
        entry = {"key": key, "mode": mode, "to": args.get("to"), "status": None}
        with lock:
            log.append(entry)
            first = key not in seen
            seen.add(key)
            done = sent.get(key)

        if key is None:
            status, body = 400, {"error": "Idempotency-Key header required"}
        elif done is not None:
            status, body = 200, dict(done, duplicate=True)
        elif mode == "bad":
            status, body = 400, {"error": "invalid recipient"}
        elif mode == "flaky" and first:
            status, body = 503, {"error": "try again later"}
        elif mode == "drop" and first:
            with lock:
                entry["status"] = "dropped"
            self.close_connection = True
            return  # no answer at all: the client sees the connection close
        else:
            if mode == "slow":
                release(key).wait(self.server.slow)
            status, body = 200, {"message_id": "msg-" + key}
            with lock:
                sent.setdefault(key, body)
        with lock:
            entry["status"] = status
        self.answer(status, body)

    def log_message(self, fmt, *args):
        sys.stderr.write("stub: %s\n" % (fmt % args))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8025, help="0: any free port")
    p.add_argument("--port-file", help="write the port there once listening")
    p.add_argument("--slow", type=float, default=1.0,
                   help="seconds a slow job's request takes, unless released before")
    opt = p.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", opt.port), Handler)
    server.daemon_threads = True
    server.slow = opt.slow
    port = server.server_address[1]
    if opt.port_file:
        # written whole, then renamed: a reader never sees half of it
        with open(opt.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        os.rename(opt.port_file + ".tmp", opt.port_file)
    sys.stderr.write("stub: listening on http://127.0.0.1:%d/send\n" % port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
