#!/usr/bin/env python3
"""A Python service holding a large dict that changes as it runs, for
pagehop's CRIU tests. It keeps a running checksum of the dict, updated
with every change; on a signal it recomputes the checksum from the dict
itself and writes both to a file in OUT_DIR (written whole, then renamed):

  SIGUSR1  check-<n>.txt: "full=<sum> running=<sum> entries=<count> changes=<n>"
  SIGUSR2  fork a child that does the same into fork-<n>.txt and exits

Memory that came back wrong makes the two sums differ (or the program
crash). Usage: dict_service.py ENTRIES OUT_DIR [CHANGES_PER_SECOND]
With HOLD_TCP=1 in the environment it also holds a TCP connection to
itself (which CRIU refuses to dump without --tcp-established or
--tcp-close).
"""
import socket
import os
import signal
import sys
import time

MASK = (1 << 61) - 1


def mix(k, v):
    return ((k * 0x9E3779B97F4A7C15) ^ (v * 0xC2B2AE3D27D4EB4F)) & MASK


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def main():
    entries = int(sys.argv[1])
    out_dir = sys.argv[2]
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 200000
    d = {i: i * 7 for i in range(entries)}
    running = 0
    for k, v in d.items():
        running = (running + mix(k, v)) & MASK
    pending = {"check": 0, "fork": 0}
    signal.signal(signal.SIGUSR1, lambda *_: pending.__setitem__("check", pending["check"] + 1))
    signal.signal(signal.SIGUSR2, lambda *_: pending.__setitem__("fork", pending["fork"] + 1))
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    held = []
    if os.environ.get("HOLD_TCP") == "1":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        held = [listener, client, server]
    write_atomically(os.path.join(out_dir, "ready"), "%d\n" % os.getpid())
    changes = 0
    burst = max(1, rate // 100)
    checks = forks = 0

    def report():
        full = 0
        for k, v in d.items():
            full = (full + mix(k, v)) & MASK
        return "full=%d running=%d entries=%d changes=%d\n" % (full, running, len(d), changes)

    while True:
        start = time.monotonic()
        for _ in range(burst):
            k = (changes * 2654435761) % entries
            old = d[k]
            new = old + changes + 1
            running = (running - mix(k, old) + mix(k, new)) & MASK
            d[k] = new
            changes += 1
        while pending["check"] > checks:
            checks += 1
            write_atomically(os.path.join(out_dir, "check-%d.txt" % checks), report())
        while pending["fork"] > forks:
            forks += 1
            pid = os.fork()
            if pid == 0:
                write_atomically(os.path.join(out_dir, "fork-%d.txt" % forks), report())
                os._exit(0)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        left = 0.01 - (time.monotonic() - start)
        if left > 0:
            time.sleep(left)


if __name__ == "__main__":
    main()
