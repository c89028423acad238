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
import selectors
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
            # Blocking: while the server's listen backlog is full, connect(2) sleeps in the kernel
            # until there is room (or the server goes away). Failing at once with EAGAIN instead
            # made thousands of waiting clients retry every second and spin on the CPUs the
            # server under test shares with them. Each holder waits in its own process; the
            # parent below keeps many connects in flight, so one waiting holder holds up no other.
            try:
                s.connect(path.decode())
                socket.send_fds(theirs, [b"o"], [s.fileno()])
            except OSError as e:
                theirs.send(b"e" + (e.strerror or "error").encode()[:200])
            s.close()
    theirs.close()
    holders.append((pid, ours))

def send(message, fd=None):
    data = (json.dumps(message) + "\n").encode()
    if fd is None:
        channel.sendall(data)
    else:
        channel.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])


send({"holders": [pid for pid, _ in holders]})

# Every holder has at most one connect in flight (its requests are not framed: a second path
# would run into the first); the others wait here, in order. Node takes one handle at a time and
# acknowledges it before the next may be sent (its own handle-passing protocol); failures are
# plain messages and go at once.
selector = selectors.DefaultSelector()
selector.register(channel, selectors.EVENT_READ, None)
for i, (_, ours) in enumerate(holders):
    selector.register(ours, selectors.EVENT_READ, i)
queued = [deque() for _ in holders]  # (tag, path) not yet sent to holder i
in_flight = [None] * len(holders)  # tag of holder i's connect in progress
handles = deque()  # (tag, fd) connected, waiting to be handed to Node
awaiting_ack = False
pending = b""


def start_next(i):
    if in_flight[i] is None and queued[i]:
        tag, path = queued[i].popleft()
        in_flight[i] = tag
        holders[i][1].send(path.encode())


while True:
    for key, _ in selector.select():
        if key.data is None:
            chunk = channel.recv(65536)
            if not chunk:
                sys.exit(0)  # the worker is gone
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if not line:
                    continue
                m = json.loads(line)
                if "connect" in m:
                    queued[m["connect"]].append((m["tag"], m["path"]))
                    start_next(m["connect"])
                elif m.get("cmd") in ("NODE_HANDLE_ACK", "NODE_HANDLE_NACK"):
                    awaiting_ack = False
        else:
            i = key.data
            msg, fds, _, _ = socket.recv_fds(holders[i][1], 256, 1)
            tag, in_flight[i] = in_flight[i], None
            if fds:
                handles.append((tag, fds[0]))
            else:
                send({"failed": tag, "error": msg[1:].decode(errors="replace") if msg else "holder exited"})
            start_next(i)
    if handles and not awaiting_ack:
        tag, fd = handles.popleft()
        # Node's handle-passing message: the socket arrives as the second argument of 'message'.
        send({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": {"tag": tag}}, fd)
        os.close(fd)
        awaiting_ack = True
