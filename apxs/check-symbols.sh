#!/bin/sh
# Fails when the module exports anything but mpm_peruser_module, links a Swift library
# dynamically, or needs an undefined symbol that Apache, APR or the C/C++ runtime do not give.
set -eu
so="$1"
exported=$(nm -D --defined-only "$so" | awk '$2 ~ /[TDBRVW]/ {print $3}' | sort -u)
if [ "$exported" != "mpm_peruser_module" ]; then
    echo "check-symbols: $so exports more than mpm_peruser_module:" >&2
    echo "$exported" | head -20 >&2
    exit 1
fi
if ldd "$so" | grep -q 'libswift'; then
    echo "check-symbols: $so links a Swift library dynamically:" >&2
    ldd "$so" >&2
    exit 1
fi
# Allowed: Apache (ap_*, ap_hook_*, unixd), APR (apr_*), libc/libm/libstdc++/libgcc (versioned
# with @GLIBC/@GLIBCXX/@GCC/@CXXABI), weak symbols, and a few unversioned Apache globals.
bad=$(nm -D --undefined-only "$so" | awk '$1 != "w" && $1 != "v" {print $2}' \
    | grep -Ev '^(ap_|apr_|unixd_|core_module|ap_server_conf|ap_scoreboard_image|ap_listeners|ap_max_mem_free|ap_my_pid|ap_pid_fname|ap_pglobal|ap_extended_status)' \
    | grep -Ev '@(GLIBC|GLIBCXX|CXXABI|GCC)_' || true)
if [ -n "$bad" ]; then
    echo "check-symbols: $so needs symbols nothing on an Apache host provides:" >&2
    echo "$bad" >&2
    exit 1
fi
echo "check-symbols: $so exports only mpm_peruser_module; all undefined symbols are Apache/APR/libc"
