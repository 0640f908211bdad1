#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/ (committed; rerun after a format
change). Valid frames and images give the fuzzer a head start past the
checksums and the JSON structure; see the fuzz targets for the input formats."""
import json
import os
import re
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = 4096


def protocol_version():
    """PROTOCOL_VERSION as engine/wire/src/frame.rs defines it: the seeds are
    for the version this tree speaks (a frame of any other is refused before
    its payload is looked at)."""
    with open(os.path.join(HERE, "..", "engine", "wire", "src", "frame.rs")) as f:
        m = re.search(r"pub const PROTOCOL_VERSION: u16 = (\d+);", f.read())
    if not m:
        raise SystemExit("PROTOCOL_VERSION not found in engine/wire/src/frame.rs")
    return int(m.group(1))


VERSION = protocol_version()
# These layouts are version 2's (every message about pages names its space).
assert VERSION == 2, f"gen_seeds.py writes version 2 payloads; update it for version {VERSION}"

KIND = {"Hello": 1, "Auth": 2, "Layout": 3, "Pages": 4, "EndOfRound": 5, "Switchover": 6,
        "Done": 7, "Error": 8, "Stats": 9, "VerifyDigests": 10, "VerifyResult": 11,
        "PageRequest": 12, "LayoutAck": 13, "Attach": 14, "Pending": 15}


def frame(kind, payload):
    """A frame as wire/frame.rs lays it out: header, crc32 over header[..12] + payload."""
    head = b"PHOP" + struct.pack("<HHI", VERSION, KIND[kind], len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head)) & 0xFFFFFFFF
    return head + struct.pack("<I", crc) + payload


def string(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def batch(space, round_, pages):
    """A raw Pages payload of address space `space` (wire/batch.rs): pages is a
    list of (addr, bytes or None for a zero page)."""
    data = b"".join(p for _, p in pages if p is not None)
    # round | flags | reserved u16 | count | data_len | raw_len | space
    head = struct.pack("<IHHIIII", round_, 0, 0, len(pages), len(data), len(data), space)
    entries = b"".join(struct.pack("<Q", a | (1 if p is None else 0)) for a, p in pages)
    return head + entries + data


def vma(start, end, prot, flags, name):
    return struct.pack("<QQII", start, end, prot, flags) + string(name)


def layout(space, vmas):
    """space u32 | count u32 | vmas (wire/msg.rs)."""
    return struct.pack("<II", space, len(vmas)) + b"".join(vma(*v) for v in vmas)


def digests(space, start, hashes):
    """space u32 | start u64 | count u32 | hashes."""
    return struct.pack("<IQI", space, start, len(hashes)) + b"".join(
        struct.pack("<Q", h) for h in hashes)


def page_request(space, addr, pages):
    """space u32 | addr u64 | pages u32 (16 bytes)."""
    return struct.pack("<IQI", space, addr, pages)


def pending(space, last, ranges):
    """space u32 | last u8 | count u32 | (start u64 | end u64) per range."""
    return struct.pack("<IBI", space, last, len(ranges)) + b"".join(
        struct.pack("<QQ", a, b) for a, b in ranges)


# One valid payload of every kind; the ones about pages name space 7 (a
# process of a tree; 0 is a single process).
MESSAGES = [
    ("Hello", struct.pack("<HBBIQ", VERSION, 1, 1, PAGE, 1 | 8) + bytes(range(32))),
    ("Auth", bytes([0xA5]) * 32),
    ("Layout", layout(7, [(0x400000, 0x402000, 5, 2, "/usr/bin/pagehop-workload"),
                          (0x7FFF00000000, 0x7FFF00021000, 3, 0, "")])),
    ("Pages", batch(7, 1, [(0x600000000000, bytes([7]) * PAGE), (0x600000001000, None),
                           (0x600000003000, bytes(range(256)) * 16)])),
    ("EndOfRound", struct.pack("<IQQQ", 3, 1234, 1234 * PAGE, 99999)),
    ("Switchover", struct.pack("<IB", 9, 1)),
    ("Done", struct.pack("<Q", 150080)),
    ("Error", struct.pack("<I", 17) + string("target exited")),
    ("Stats", string('{"rounds":4,"downtime_ms":12.5}')),
    ("VerifyDigests", digests(7, 0x7F0000000000, [1, 2, 3])),
    ("VerifyResult", struct.pack("<BQQ", 1, 0x7F0012345000, 5)),
    ("PageRequest", page_request(7, 0x7F0012345000, 16)),
    ("LayoutAck", struct.pack("<I", 7)),
    ("Attach", struct.pack("<QBI", 0xDEADBEEF0123, 3, 1)),
    ("Pending", pending(7, 1, [(0x1000, 0x3000), (0x7FFF00000000, 0x7FFF00010000)])),
]

# A two-process tree (spaces 1 and 2) after a single process (space 0): the
# frames of one session that differ only in the space they name.
TREE = [
    ("Layout", layout(0, [(0x400000, 0x401000, 5, 0, "/bin/sh")])),
    ("Layout", layout(1, [(0x400000, 0x402000, 5, 2, "/usr/bin/pagehop-workload")])),
    ("Layout", layout(2, [(0x7F0000000000, 0x7F0000004000, 3, 0, "[heap]")])),
    ("LayoutAck", struct.pack("<I", 1)),
    ("Pages", batch(1, 0, [(0x400000, bytes([1]) * PAGE), (0x401000, None)])),
    ("Pages", batch(2, 0, [(0x7F0000000000, None), (0x7F0000002000, bytes([2]) * PAGE)])),
    ("Pages", batch(0xFFFFFFFF, 0, [])),
    ("EndOfRound", struct.pack("<IQQQ", 0, 4, 2 * PAGE, 2 * PAGE)),
    ("VerifyDigests", digests(1, 0x400000, [0x9E3779B97F4A7C15, 0])),
    ("VerifyDigests", digests(2, 0x7F0000000000, [])),
    ("PageRequest", page_request(2, 0x7F0000001000, 1)),
    ("PageRequest", page_request(0, 0x400000, 1)),
    ("Pending", pending(1, 0, [(0x401000, 0x402000)])),
    ("Pending", pending(2, 1, [(0x7F0000001000, 0x7F0000002000), (0x7F0000003000, 0x7F0000004000)])),
    # A process of the tree that exited: an empty layout.
    ("Layout", layout(2, [])),
]


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def clear(target):
    """Removes a target's old seeds, so that none of an older format stays."""
    d = os.path.join(HERE, "seeds", target)
    if os.path.isdir(d):
        for name in os.listdir(d):
            os.remove(os.path.join(d, name))


def frame_seeds():
    clear("frame_decoder")
    # Mode 0 (bit 0 clear): a byte stream of frames; bits 1-6 = 12: page size 4096.
    stream = b"".join(frame(k, p) for k, p in MESSAGES)
    write("frame_decoder", "stream-all-kinds", bytes([12 << 1]) + stream)
    tree = b"".join(frame(k, p) for k, p in TREE)
    write("frame_decoder", "stream-tree", bytes([12 << 1]) + tree)
    write("frame_decoder", "chunk-tree", bytes([(12 << 1) | 1]) + b"".join(
        bytes([KIND[k] - 1]) + struct.pack("<H", len(p)) + p for k, p in TREE))
    for k, p in MESSAGES:
        write("frame_decoder", f"stream-{k}", bytes([12 << 1]) + frame(k, p))
        # Mode 1: kind u8 | len u16 | payload chunks, framed by the target.
        write("frame_decoder", f"chunk-{k}", bytes([(12 << 1) | 1, KIND[k] - 1])
              + struct.pack("<H", len(p)) + p)


def image_seed(name, manifest, pages):
    # The writer's formatting (serde_json::to_vec_pretty: two-space indent).
    js = json.dumps(manifest, indent=2).encode()
    write("image_reader", name, struct.pack("<H", len(js)) + js + pages)


def image_seeds():
    clear("image_reader")
    image_seed("empty", {"format": "pagehop-image", "version": 1, "page_size": PAGE,
                         "ranges": [], "runs": []}, b"")
    image_seed("sample", {
        "format": "pagehop-image", "version": 1, "page_size": PAGE,
        "ranges": [{"start": "100000", "end": "108000"}, {"start": "108000", "end": "10c000"},
                   {"start": "7f0000000000", "end": "7f0000010000"}],
        "runs": [{"addr": "100000", "pages": 3, "kind": "data", "offset": 0},
                 {"addr": "103000", "pages": 2, "kind": "zero"},
                 {"addr": "107000", "pages": 3, "kind": "data", "offset": 3 * PAGE},
                 {"addr": "10b000", "pages": 1, "kind": "zero"},
                 {"addr": "7f000000f000", "pages": 1, "kind": "data", "offset": 6 * PAGE}],
    }, b"".join(bytes([i]) * PAGE for i in range(1, 8)))
    image_seed("big-zero-run", {
        "format": "pagehop-image", "version": 1, "page_size": PAGE,
        "ranges": [{"start": "600000000000", "end": "600020000000"}],
        "runs": [{"addr": "600000000000", "pages": 131071, "kind": "zero"},
                 {"addr": "60001ffff000", "pages": 1, "kind": "data", "offset": 0}],
    }, bytes([0x5A]) * PAGE)


if __name__ == "__main__":
    frame_seeds()
    image_seeds()
