#!/bin/sh
# Installs those of the Debian packages named as arguments that are not installed yet
# (apt-get, non-interactive). Needs root. Used by install-deps.sh and install-deb-deps.sh.
set -eu
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "$(basename "$0"): installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
