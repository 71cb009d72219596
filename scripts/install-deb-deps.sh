#!/bin/sh
# What building the .deb needs beyond the build itself (scripts/install-deps.sh): debhelper,
# dpkg-dev and lintian. dh_apache2 comes with apache2-dev. Idempotent; needs root.
set -eu
sh "$(dirname "$0")/apt-install-missing.sh" debhelper dpkg-dev lintian
