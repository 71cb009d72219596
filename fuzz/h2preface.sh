#!/bin/sh
# Fuzzes the h2c preface scanner and its HPACK decoder with libFuzzer (swiftc
# -sanitize=fuzzer,address) for a bounded time, seeded with prefaces as curl, nghttp2 and Python's
# h2 send them (Huffman and literal). Usage: fuzz/h2preface.sh [seconds]   (default 60). Exits
# non-zero on a finding.
set -eu
. "$(dirname "$0")/common.sh"
mkdir -p "$OUT/h2corpus"
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name H2PrefaceFuzz \
    Sources/PeruserCore/Routing/H2Preface.swift Sources/PeruserCore/Routing/HPACK.swift \
    Sources/PeruserCore/Routing/RequestHead.swift Sources/PeruserCore/Routing/ClientAddress.swift \
    fuzz/H2PrefaceFuzz.swift -o "$OUT/h2preface"
python3 - "$OUT/h2corpus" <<'PY'
import struct, sys
def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
settings = frame(4, 0, 0, struct.pack(">HIHI", 3, 100, 4, 10485760))
update = frame(8, 0, 0, struct.pack(">I", 1048576))
blocks = {
    "rfc-huffman": "82868441" + "8cf1e3c2e5f23a6ba0ab90f4ff",
    "rfc-literal": "828684410f7777772e6578616d706c652e636f6d",
    "python-huffman": "8286448b60d5485f2bd73d7fe79803418b1d06215749509b8f01e07f7a8725b650c3abbcf7",
    "never-indexed": "82841108626f622e74657374",
    "host-header": "8284668720ec3d0ba4a84f",
}
for name, block in blocks.items():
    data = bytes.fromhex(block)
    # Without the preface: the target puts it in front itself.
    open(f"{sys.argv[1]}/{name}", "wb").write(settings + update + frame(1, 5, 1, data))
    half = len(data) // 2
    open(f"{sys.argv[1]}/{name}-continued", "wb").write(
        settings + frame(1, 1, 1, data[:half]) + frame(9, 4, 1, data[half:]))
    open(f"{sys.argv[1]}/{name}-padded", "wb").write(
        settings + frame(1, 0x2D, 1, bytes([2]) + bytes(5) + data + bytes(2)))
PY
run_fuzzer h2preface h2corpus
