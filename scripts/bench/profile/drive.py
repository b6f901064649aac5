#!/usr/bin/env python3
"""Send a fixed number of widget requests over keep-alive connections (the load for
callgrind): drive.py PORT create|process N [CONNS]. process-message first creates N
conversations, one per request, so no answer waits for another."""
import http.client, json, sys, threading

port, kind, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conns = int(sys.argv[4]) if len(sys.argv) > 4 else 4
H = {"Origin": "http://localhost"}

def create(c):
    c.request("GET", "/open-ai/create-thread", headers=H)
    r = c.getresponse(); body = r.read()
    assert r.status == 200, (r.status, body)
    return json.loads(body)["id"]

def process(c, tid):
    body = json.dumps({"threadId": tid, "message": "benchmark message number one"})
    c.request("POST", "/open-ai/process-message", body=body,
              headers={**H, "Content-Type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status == 200 and b"thread.run.completed" in data or b"done" in data.lower(), (r.status, data[:300])

def run(k, jobs):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for j in jobs:
        create(c) if kind == "create" else process(c, j)

if kind == "prepare":  # print N handles
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n): print(create(c))
    sys.exit()
jobs = list(range(n)) if kind == "create" else [l.strip() for l in open(sys.argv[5])][:n]
ts = [threading.Thread(target=run, args=(k, jobs[k::conns])) for k in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
