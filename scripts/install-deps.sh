#!/bin/sh
# Installs what building and testing need, on Debian bookworm with Swift at /opt/swift (or on
# PATH). Idempotent: installs only what is missing. Needs root for apt-get.
set -eu

# openssl: test certificates; python3 at /usr/bin: the CGIs of the isolation and hostile suites.
# nghttp2-client: h2load and nghttp for the HTTP/2 suites; chromium: the real-browser HTTP/2 test.
# strace: holds a moment of the parent open in a status-page test.
packages="apache2 apache2-dev libapr1-dev libaprutil1-dev libapache2-mod-php curl procps passwd binutils gcc make openssl python3 nghttp2-client chromium iproute2 strace"
sh "$(dirname "$0")/apt-install-missing.sh" $packages

if ! python3 -m pytest --version >/dev/null 2>&1; then
    echo "install-deps: installing pytest"
    python3 -m pip install -q pytest 2>/dev/null \
        || { apt-get install -y -qq python3-pytest >/dev/null; }
fi

# h2 (PyPI): an HTTP/2 client that puts streams for several hosts on one connection.
if ! python3 -c "import h2" >/dev/null 2>&1; then
    echo "install-deps: installing h2"
    python3 -m pip install -q h2 2>/dev/null \
        || { apt-get install -y -qq python3-h2 >/dev/null; }
fi

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
        echo "install-deps: Swift is at /opt/swift/usr/bin; add it to PATH" >&2
    else
        echo "install-deps: no Swift toolchain found (expected on PATH or at /opt/swift)" >&2
    fi
    exit 1
fi
