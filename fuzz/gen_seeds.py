#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/ (committed; rerun after a format
change). Valid frames and images give the fuzzer a head start past the
checksums and the JSON structure; see the fuzz targets for the input formats."""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = 4096

KIND = {"Hello": 1, "Auth": 2, "Layout": 3, "Pages": 4, "EndOfRound": 5, "Switchover": 6,
        "Done": 7, "Error": 8, "Stats": 9, "VerifyDigests": 10, "VerifyResult": 11,
        "PageRequest": 12, "LayoutAck": 13, "Attach": 14, "Pending": 15}


def frame(kind, payload):
    """A frame as wire/frame.rs lays it out: header, crc32 over header[..12] + payload."""
    head = b"PHOP" + struct.pack("<HHI", 1, KIND[kind], len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head)) & 0xFFFFFFFF
    return head + struct.pack("<I", crc) + payload


def string(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def batch(round_, pages):
    """A raw Pages payload: pages is a list of (addr, bytes or None for a zero page)."""
    data = b"".join(p for _, p in pages if p is not None)
    head = struct.pack("<IHHIIII", round_, 0, 0, len(pages), len(data), len(data), 0)
    entries = b"".join(struct.pack("<Q", a | (1 if p is None else 0)) for a, p in pages)
    return head + entries + data


MESSAGES = [
    ("Hello", struct.pack("<HBBIQ", 1, 1, 1, PAGE, 1 | 8) + bytes(range(32))),
    ("Auth", bytes([0xA5]) * 32),
    ("Layout", struct.pack("<I", 2)
     + struct.pack("<QQII", 0x400000, 0x402000, 5, 2) + string("/usr/bin/pagehop-workload")
     + struct.pack("<QQII", 0x7FFF00000000, 0x7FFF00021000, 3, 0) + string("")),
    ("Pages", batch(1, [(0x600000000000, bytes([7]) * PAGE), (0x600000001000, None),
                        (0x600000003000, bytes(range(256)) * 16)])),
    ("EndOfRound", struct.pack("<IQQQ", 3, 1234, 1234 * PAGE, 99999)),
    ("Switchover", struct.pack("<IB", 9, 1)),
    ("Done", struct.pack("<Q", 150080)),
    ("Error", struct.pack("<I", 17) + string("target exited")),
    ("Stats", string('{"rounds":4,"downtime_ms":12.5}')),
    ("VerifyDigests", struct.pack("<QI", 0x7F0000000000, 3) + struct.pack("<QQQ", 1, 2, 3)),
    ("VerifyResult", struct.pack("<BQQ", 1, 0x7F0012345000, 5)),
    ("PageRequest", struct.pack("<QI", 0x7F0012345000, 16)),
    ("LayoutAck", struct.pack("<I", 7)),
    ("Attach", struct.pack("<QBI", 0xDEADBEEF0123, 3, 1)),
    ("Pending", struct.pack("<BI", 1, 2) + struct.pack("<QQQQ", 0x1000, 0x3000, 0x7FFF00000000, 0x7FFF00010000)),
]


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame_seeds():
    # Mode 0 (bit 0 clear): a byte stream of frames; bits 1-6 = 12: page size 4096.
    stream = b"".join(frame(k, p) for k, p in MESSAGES)
    write("frame_decoder", "stream-all-kinds", bytes([12 << 1]) + stream)
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
