#!/bin/sh
# Installs what Apache's own test suite (the perl-framework, ../shared/httpd-tests) needs, for
# tests/conformance/run_httpd_tests.py: Apache::Test (it comes with mod_perl; Debian has no
# separate package) and the Perl modules the suite's tests use. Idempotent: installs only what
# is missing. Needs root. Run scripts/install-deps.sh first for apache2 and apache2-dev (apxs).
#
# /etc/apache2 is left as it was: installing libapache2-mod-perl2 enables perl.load there (its
# postinst runs a2enmod perl), and the Debian package test and the system Apache read that
# directory. The conformance runner does not inherit /etc/apache2 at all: it hands Apache::Test
# a module list of its own (-httpd_conf), the same for both MPMs, so what is enabled here never
# decides which of the suite's tests run.
set -eu

# Beyond the list in ../shared/notes/running-httpd-tests.md: perl-doc (t/filter/case.t fetches
# perlsub.pod through an Alias to /usr/share/perl/*/pod) and libanyevent-websocket-client-perl
# (t/modules/proxy_websockets*.t; they skip without it). LWP::Protocol::AnyEvent::http
# (t/modules/sed.t) is not packaged in Debian; that test skips.
packages="libapache2-mod-perl2 libwww-perl libhttp-daemon-perl libprotocol-http2-perl \
libcrypt-ssleay-perl liblwp-protocol-https-perl libhttp-dav-perl libdatetime-perl \
libanyevent-perl libfcgi-perl perl-doc libanyevent-websocket-client-perl"

# Was perl enabled before? (a2query exits 0 when it is.) Only a perl.load this script's install
# enabled is disabled again; one the admin enabled stays.
perl_was_enabled=no
if command -v a2query >/dev/null 2>&1 && a2query -q -m perl 2>/dev/null; then
    perl_was_enabled=yes
fi
mod_perl_was_installed=no
dpkg-query -W -f='${Status}' libapache2-mod-perl2 2>/dev/null | grep -q "install ok installed" \
    && mod_perl_was_installed=yes

sh "$(dirname "$0")/apt-install-missing.sh" $packages

if [ "$mod_perl_was_installed" = no ] && [ "$perl_was_enabled" = no ] \
        && command -v a2query >/dev/null 2>&1 && a2query -q -m perl 2>/dev/null; then
    echo "$(basename "$0"): disabling perl in /etc/apache2 again (enabled by mod_perl's postinst;" \
         "the conformance runner brings its own module list)"
    a2dismod -q -f perl >/dev/null
fi

perl -MApache::Test -e 'exit 0' 2>/dev/null || {
    echo "$(basename "$0"): Apache::Test is still missing after the install" >&2
    exit 1
}
