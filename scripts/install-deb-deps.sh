#!/bin/sh
# What building the .deb needs beyond the build itself (scripts/install-deps.sh): debhelper,
# dpkg-dev and lintian. dh_apache2 comes with apache2-dev. Idempotent; needs root.
set -eu
missing=""
for p in debhelper dpkg-dev lintian; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install-deb-deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
