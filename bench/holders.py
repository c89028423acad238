"""Identity holders for the benchmark's client processes (bench/client-worker.ts).

The Workload API identifies a caller by the process that connected (SO_PEERCRED), so a thousand
identities need a thousand processes; a thousand Node.js processes would not fit on a small
machine. This helper forks N small holder processes instead. On request, holder i connects to
the Workload API socket itself (so the connection is attested as holder i, which a task is bound
to) and hands the connected socket to its parent, which passes it to the Node.js worker over the
worker's IPC channel (Node's own handle-passing messages), so the worker runs gRPC over it.

usage (spawned by the worker with an 'ipc' stdio channel): python3 holders.py COUNT
"""
import json
import os
import signal
import socket
import sys
from collections import deque

count = int(sys.argv[1])
channel = socket.socket(fileno=int(os.environ["NODE_CHANNEL_FD"]))

holders = []  # (pid, our end of the socketpair)
for i in range(count):
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        channel.close()
        for _, other in holders:
            other.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            path = theirs.recv(4096)
            if not path:
                os._exit(0)  # the parent is gone
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Non-blocking, like a Node.js client: a full listen backlog is EAGAIN (retried with
            # backoff by the worker), never a holder stuck in connect() holding up the others.
            s.setblocking(False)
            try:
                s.connect(path.decode())
                socket.send_fds(theirs, [b"o"], [s.fileno()])
            except OSError as e:
                theirs.send(b"e" + (e.strerror or "error").encode()[:200])
            s.close()
    theirs.close()
    holders.append((pid, ours))

pending = b""


def send(message, fd=None):
    data = (json.dumps(message) + "\n").encode()
    if fd is None:
        channel.sendall(data)
    else:
        channel.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])


def messages():
    """JSON lines from the worker, in order."""
    global pending
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line:
                yield json.loads(line)
        chunk = channel.recv(65536)
        if not chunk:
            return
        pending += chunk


send({"holders": [pid for pid, _ in holders]})
inbox = messages()
requests = deque()


def next_request():
    if requests:
        return requests.popleft()
    for m in inbox:
        if "connect" in m:
            return m
    return None


while True:
    m = next_request()
    if m is None:
        break
    i, tag = m["connect"], m["tag"]
    _, ours = holders[i]
    ours.send(m["path"].encode())
    msg, fds, _, _ = socket.recv_fds(ours, 256, 1)
    if fds:
        # Node's handle-passing message: the socket arrives as the second argument of 'message'.
        send({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": {"tag": tag}}, fds[0])
        os.close(fds[0])
        # Node sends one handle at a time and waits for the acknowledgement; so do we.
        for ack in inbox:
            if ack.get("cmd") in ("NODE_HANDLE_ACK", "NODE_HANDLE_NACK"):
                break
            if "connect" in ack:
                requests.append(ack)
    else:
        send({"failed": tag, "error": msg[1:].decode(errors="replace")})
