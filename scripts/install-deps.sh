#!/bin/sh
# Installs what building and testing need, on Debian bookworm with Swift at /opt/swift (or on
# PATH). Idempotent: installs only what is missing. Needs root for apt-get.
set -eu

# openssl: test certificates; python3 at /usr/bin: the CGIs of the isolation and hostile suites.
packages="apache2 apache2-dev libapr1-dev libaprutil1-dev libapache2-mod-php curl procps passwd binutils gcc make openssl python3"
sh "$(dirname "$0")/apt-install-missing.sh" $packages

if ! python3 -m pytest --version >/dev/null 2>&1; then
    echo "install-deps: installing pytest"
    python3 -m pip install -q pytest 2>/dev/null \
        || { apt-get install -y -qq python3-pytest >/dev/null; }
fi

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
        echo "install-deps: Swift is at /opt/swift/usr/bin; add it to PATH" >&2
    else
        echo "install-deps: no Swift toolchain found (expected on PATH or at /opt/swift)" >&2
    fi
    exit 1
fi
