#!/usr/bin/env python3
"""Loads, writes to and checks a redis-server over its own protocol (RESP),
with nothing but the standard library, for pagehop's CRIU tests.

  load  HOST PORT N SIZE          SET key:i to value(i, SIZE) for i < N
  write HOST PORT ACKED_FILE      SET w:i to value(i) for i = 0, 1, ... and
                                  append i to ACKED_FILE once redis said OK,
                                  until the connection ends
  check HOST PORT N SIZE ACKED    every key:i and every acknowledged w:i has
                                  its value; then a write and a read work
  read  HOSTS PORT N SIZE SECONDS OUT
                                  GET key:i (spread over all N keys) in a loop,
                                  from the first of the comma-separated HOSTS
                                  that answers (the source, then the
                                  destination), checking every value; writes a
                                  JSON summary to OUT: the longest gap between
                                  two answers, answers per host, wrong values,
                                  and the read latency in the first 3 s of the
                                  last host; it ends after those 3 s or after
                                  SECONDS, whichever comes first

Exit status 0 and a last line "ok ..." on success, 1 and "bad ..." otherwise.
"""
import random
import socket
import sys
import time


def value(i, size=64):
    # Incompressible and different per key (as a cache of compressed or
    # encrypted blobs would be): neither lz4 nor zero pages flatter a
    # migration, and a value landing under the wrong key is caught.
    return b"%d:" % i + random.Random(i).randbytes(size)[: size - len(b"%d:" % i)]


class Redis:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def send(self, *commands):
        out = []
        for args in commands:
            out.append(b"*%d\r\n" % len(args))
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError("bad reply %r" % line)


def load(host, port, n, size):
    r = Redis(host, port)
    batch = 1000
    for start in range(0, n, batch):
        end = min(n, start + batch)
        r.send(*[("SET", b"key:%d" % i, value(i, size)) for i in range(start, end)])
        for _ in range(start, end):
            if r.reply() != b"OK":
                print("bad SET")
                return 1
    print("ok loaded %d keys of %d bytes" % (n, size))
    return 0


def write(host, port, acked_path):
    r = Redis(host, port)
    i = 0
    with open(acked_path, "a", buffering=1) as acked:
        try:
            while True:
                r.send(("SET", b"w:%d" % i, value(i)))
                if r.reply() != b"OK":
                    break
                acked.write("%d\n" % i)
                i += 1
                if i % 64 == 0:
                    time.sleep(0.001)
        except (OSError, ConnectionError, RuntimeError):
            pass
    print("ok wrote %d" % i)
    return 0


def check(host, port, n, size, acked_path):
    r = Redis(host, port)
    try:
        with open(acked_path) as f:
            acked = [int(l) for l in f if l.strip()]
    except FileNotFoundError:
        acked = []
    writes = max(acked) + 1 if acked else 0
    batch = 1000
    for prefix, count, sz in ((b"key", n, size), (b"w", writes, 64)):
        for start in range(0, count, batch):
            end = min(count, start + batch)
            r.send(["MGET"] + [b"%s:%d" % (prefix, i) for i in range(start, end)])
            got = r.reply()
            for i, v in zip(range(start, end), got):
                if v != value(i, sz):
                    print("bad %s:%d = %r" % (prefix.decode(), i, v if v is None else v[:40]))
                    return 1
    r.send(("SET", "after", "migration"), ("GET", "after"))
    if r.reply() != b"OK" or r.reply() != b"migration":
        print("bad write after the migration")
        return 1
    print("ok keys=%d writes=%d" % (n, writes))
    return 0


FIRST_SECONDS = 3.0
PACE_S = 0.0005


def read(hosts, port, n, size, seconds, out_path):
    import json
    hosts = hosts.split(",")
    start = time.time()
    deadline = start + float(seconds)
    last = None
    gap = 0.0
    gap_at = 0.0
    answers = [0] * len(hosts)
    first = [None] * len(hosts)
    latencies = []
    bad = 0
    r = None
    at = 0
    j = 0
    while time.time() < deadline:
        if first[-1] is not None and time.time() - first[-1] > FIRST_SECONDS + 0.2:
            break
        try:
            if r is None:
                # A short timeout: a GET takes well under a millisecond, and
                # a frozen source answers nothing.
                r = Redis(hosts[at], port, timeout=0.02)
            i = (j * 7919) % n
            sent = time.time()
            r.send(("GET", b"key:%d" % i))
            v = r.reply()
            now = time.time()
            j += 1
            if v != value(i, size):
                bad += 1
            if last is not None and now - last > gap:
                gap, gap_at = now - last, last - start
            last = now
            answers[at] += 1
            if first[at] is None:
                first[at] = now
            if at == len(hosts) - 1 and now - first[at] <= FIRST_SECONDS:
                latencies.append((now - sent) * 1e6)
            # Paced (about 1500 GETs a second): a client, not a load
            # generator taking a core from the migration.
            time.sleep(PACE_S)
        except (OSError, ConnectionError, RuntimeError):
            r = None
            # Try the hosts in turn until the last one (the destination)
            # answers; from then on only it.
            if answers[-1] == 0:
                at = (at + 1) % len(hosts)
            time.sleep(0.0005)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0

    summary = {
        "longest_gap_ms": gap * 1e3,
        "gap_started_s": gap_at,
        "answers": answers,
        "bad_values": bad,
        "first_seconds_latency_us": {
            "count": len(latencies),
            "p50": pct(0.5),
            "p99": pct(0.99),
            "max": latencies[-1] if latencies else 0,
            "mean": sum(latencies) / len(latencies) if latencies else 0,
        },
    }
    with open(out_path, "w") as f:
        json.dump(summary, f)
    ok = bad == 0 and answers[-1] > 0
    print(("ok " if ok else "bad ") + json.dumps(summary))
    return 0 if ok else 1


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "load":
        return load(args[0], args[1], int(args[2]), int(args[3]))
    if cmd == "write":
        return write(args[0], args[1], args[2])
    if cmd == "check":
        return check(args[0], args[1], int(args[2]), int(args[3]), args[4])
    if cmd == "read":
        return read(args[0], args[1], int(args[2]), int(args[3]), args[4], args[5])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
