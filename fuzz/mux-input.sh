#!/bin/sh
# Fuzzes what a multiplexer reads from clients (HTTP/1.x heads, PROXY headers, heads that
# trickle in, forwarded-client values) and from workers (hand-back messages) with libFuzzer
# (swiftc -sanitize=fuzzer,address) for a bounded time, seeded with real heads, PROXY headers
# of both versions and a valid hand-back message. Usage: fuzz/mux-input.sh [seconds]
# (default 60). Exits non-zero on a finding.
set -eu
. "$(dirname "$0")/common.sh"
mkdir -p "$OUT/muxcorpus"
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name MultiplexerInputFuzz \
    Sources/PeruserCore/Routing/*.swift fuzz/MultiplexerInputFuzz.swift -o "$OUT/mux-input"
python3 - "$OUT/muxcorpus" <<'PY'
import socket, struct, sys
out = sys.argv[1]
heads = {
    "curl": b"GET /index.html HTTP/1.1\r\nHost: a.test\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "proxy": b"GET http://b.test/x?y=1 HTTP/1.1\r\nHost: b.test:8080\r\nX-Forwarded-For: 192.0.2.7, 2001:db8::1\r\n"
             b"X-Forwarded-For: 198.51.100.2\r\nConnection: keep-alive\r\n\r\n",
    "blank-lines": b"\r\n\r\nPOST /f HTTP/1.0\r\nhost:\tc.test \r\nContent-Length: 3\r\n\r\nabc",
    "http09": b"GET /old\r\n",
    "pipelined": b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: b.test\r\n\r\n",
}
for name, head in heads.items():
    open(f"{out}/{name}", "wb").write(head)
open(f"{out}/proxy-v1", "wb").write(b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n" + heads["curl"])
open(f"{out}/proxy-v1-v6", "wb").write(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n" + heads["curl"])
v2sig = b"\r\n\r\n\x00\r\nQUIT\n"
addresses = socket.inet_aton("192.0.2.1") + socket.inet_aton("192.0.2.2") + struct.pack(">HH", 56324, 443)
open(f"{out}/proxy-v2", "wb").write(v2sig + bytes([0x21, 0x11]) + struct.pack(">H", len(addresses)) + addresses
                                    + heads["curl"])
consumed = heads["pipelined"]
client = bytes(10) + b"\xff\xff" + socket.inet_aton("127.0.0.3")
message = (b"PRU4" + struct.pack("<HBBI", 1, 1, 0, len(consumed)) + struct.pack("<Q", 0x1234)
           + client + struct.pack("<Q", 7) + consumed)
open(f"{out}/handback", "wb").write(message)
PY
run_fuzzer mux-input muxcorpus
