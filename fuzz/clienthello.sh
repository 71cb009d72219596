#!/bin/sh
# Fuzzes the ClientHello parser with libFuzzer (swiftc -sanitize=fuzzer,address) for a bounded
# time, seeded with the real ClientHellos of Tests/PeruserCoreTests/ClientHelloSamples.swift.
# Usage: fuzz/clienthello.sh [seconds]   (default 60). Exits non-zero on a finding.
set -eu
. "$(dirname "$0")/common.sh"
mkdir -p "$OUT/corpus"
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name ClientHelloFuzz \
    Sources/PeruserCore/Routing/ClientHello.swift fuzz/ClientHelloFuzz.swift -o "$OUT/clienthello"
python3 - "$OUT/corpus" <<'PY'
import re, sys
text = open("Tests/PeruserCoreTests/ClientHelloSamples.swift").read()
for i, entry in enumerate(re.findall(r'\("(\w+)", [^,]+,\n((?:\s+"[0-9a-f]+"(?: \+)?\n?)+)', text)):
    hexed = "".join(re.findall(r'"([0-9a-f]+)"', entry[1]))
    open(f"{sys.argv[1]}/{entry[0]}", "wb").write(bytes.fromhex(hexed))
PY
run_fuzzer clienthello corpus
