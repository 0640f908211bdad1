#!/usr/bin/env python3
"""Copies a directory of CRIU images over one TCP connection (a tar stream,
no compression, no encryption), for the CRIU baselines of `pagehop bench`:
what an operator's `scp -r` or `rsync` between hosts would carry, without
their CPU cost.

  serve ADDR PORT DIR   accept one connection, unpack its tar stream into DIR
                        (regular files only, no paths outside DIR), print
                        "ok BYTES", exit
  send  ADDR PORT DIR   print "ready", wait for a line on standard input, then
                        send every regular file of DIR, print "ok BYTES"

Both start before the migration does, so that what is timed is the copy
(an operator's copy tool would be at hand too), not Python starting.

Exit status 0 on success; 1 and "bad ..." otherwise.
"""
import os
import socket
import sys
import tarfile


class Counter:
    def __init__(self, f):
        self.f = f
        self.bytes = 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.bytes += len(data)
        return data

    def write(self, data):
        self.f.write(data)
        self.bytes += len(data)
        return len(data)

    def flush(self):
        self.f.flush()


def serve(addr, port, target):
    os.makedirs(target, exist_ok=True)
    listener = socket.create_server((addr, int(port)))
    print("listening", flush=True)
    conn, _ = listener.accept()
    stream = Counter(conn.makefile("rb"))
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = os.path.basename(member.name)
            if not member.isfile() or name != member.name or name in ("", ".", ".."):
                print("bad member %r" % member.name, flush=True)
                return 1
            src = tar.extractfile(member)
            with open(os.path.join(target, name), "xb") as out:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
    # The tar's end padding: read to the sender's end, so that closing
    # here does not reset the connection under the sender.
    while stream.read(1 << 16):
        pass
    print("ok %d" % stream.bytes, flush=True)
    return 0


def send(addr, port, source):
    print("ready", flush=True)
    sys.stdin.readline()
    conn = socket.create_connection((addr, int(port)), timeout=30)
    stream = Counter(conn.makefile("wb", buffering=1 << 20))
    with tarfile.open(fileobj=stream, mode="w|") as tar:
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            if os.path.isfile(path) and not os.path.islink(path):
                tar.add(path, arcname=name)
    stream.flush()
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    print("ok %d" % stream.bytes, flush=True)
    return 0


def main(argv):
    if len(argv) != 5 or argv[1] not in ("serve", "send"):
        print("bad usage: copy_dir.py serve|send ADDR PORT DIR", flush=True)
        return 1
    action = serve if argv[1] == "serve" else send
    try:
        return action(argv[2], argv[3], argv[4])
    except (OSError, tarfile.TarError) as e:
        print("bad %s" % e, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
