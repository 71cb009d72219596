#!/usr/bin/env python3
"""Apache's own test suite (the perl-framework, apache/httpd-tests) under mpm_prefork and under
this MPM, on one generated configuration, and the differences between the two (issue 20: the
suite passes under peruser wherever it passes under prefork).

    sudo python3 tests/conformance/run_httpd_tests.py                 # everything, ~12 minutes
    sudo python3 tests/conformance/run_httpd_tests.py --only t/apache/http_strict.t t/modules/cgi.t
    options: --keep (keep the temp dir: logs, TAP output, results.json), --mpm-so PATH
             (default build/mod_mpm_peruser.so), --timeout SECONDS (per test file, default 180),
             --with-module perl|php (load mod_perl or mod_php too; see MODULES),
             --suite DIR (default $HTTPD_TESTS, else ../shared/httpd-tests next to the repo)

Needs root, apache2 and apache2-dev (apxs; scripts/install-deps.sh) and the suite's Perl side
(scripts/install-httpd-tests-deps.sh). What it does:

1. Copies the suite into a temp dir (the pinned copy stays untouched) and configures it with
   apxs. Apache::Test inherits LoadModule lines from an httpd.conf; it gets one written here
   (MODULES below), never /etc/apache2, so the module set does not depend on what is enabled on
   the machine, and it is the same for both MPMs. The suite's User and Group are a dedicated
   system account, peruser-suite (Apache::Test would take "nobody" when run as root), and the
   copied tree is owned by it, as a developer's checkout is owned by the developer.
2. Apache::Test refuses to run as root; this MPM needs a root parent. A module written into the
   temp dir at run time redefines Apache::TestRun::check_runtime_user and is loaded with
   perl -I... -M... for every t/TEST call (configure, start, stop), which run as root. The
   test scripts themselves (the clients) run as peruser-suite, like a developer who runs the
   suite on a checkout of their own: what a test creates for the server (proxy.t's unix socket
   backend, files under htdocs) is then usable by the server's children.
3. Runs every test file (in t/TEST's order, all.t deciding for its directory like t/TEST does)
   once with the stock mpm_prefork, then, on a fresh copy of the same configured tree, with this
   MPM: the mpm_prefork LoadModule is replaced by LoadModule mpm_peruser_module, a <Processor
   suite> running as peruser-suite (the user prefork's children run as), MultiplexerUser and
   MultiplexerGroup peruser-suite-mux (no environment may share the multiplexers' account),
   `ServerEnvironment suite` for the main server, MinProcessors 2 (prefork's StartServers 2 in
   the suite's configuration), MaxConnectionsPerChild 0 (the suite's MaxRequestsPerChild 0, written
   only inside the stock MPMs' <IfModule>s) and ProcessorWaitTimeout 60 (prefork queues a connection until a
   child is free; see switch_to_peruser); Apache::Test's record of the server it
   configured (t/conf/apache_test_config.pm and the httpd.conf it inherited from) names this MPM
   instead of prefork, as t/modules/info.t compares the module list. Nothing else differs
   (exactly one MPM is loaded in each run; checked). If configtest refuses a global
   ServerEnvironment (a build from before it was supported), the line is put into every
   <VirtualHost> instead, and that is logged.
4. Each test file runs as t/TEST's harness runs it (perl -w FILE from the suite's top directory)
   with a per-file timeout (its process group is killed afterwards); its TAP output is parsed
   per file and per subtest, and the children that crashed meanwhile are counted from the
   error_log (prefork's "exit signal", peruser's "was killed by signal").
5. Prints one row per file (prefork result, peruser result, subtests that pass under prefork and
   not under peruser), then `N passed, M failed`: M files regress (the file or one of its
   subtests passes under prefork and fails under peruser), N are the others. Exit status 1 if
   M > 0. Known prefork failures (tests/conformance/known-prefork-failures.txt) are marked.
   The suite logs at trace8 with mod_dumpio: with --keep, expect about 1.3 GB in the temp dir.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
APXS = "/usr/bin/apxs"
SUITE_USER = "peruser-suite"        # the suite's User/Group: prefork's children, peruser's workers
MUX_USER = "peruser-suite-mux"      # peruser's multiplexers (MultiplexerUser/MultiplexerGroup)
ENVIRONMENT = "suite"
FIRST_PORT = 8529                   # Apache::Test's default; the suite uses 8529 to about 8562
KNOWN_FAILURES = os.path.join(HERE, "known-prefork-failures.txt")
ASROOT_MODULE = "PeruserSuiteAsRoot"

# The modules the suite's server loads, under both MPMs, in this order (Debian's mods-available
# order, which is the order a2enmod would give them): every module Debian's apache2-bin ships,
# except:
#   mpm_event, mpm_worker: one MPM per run (mpm_prefork is added for the prefork run only);
#   cgid: mod_cgi is the CGI module of non-threaded MPMs (prefork, peruser); loading both gives
#         two handlers for cgi-script, and cgid's daemon would run every CGI as the server's User;
#   suexec: nothing in the suite configures it, and its wrapper accepts only www-data as caller.
# bucketeer, case_filter and case_filter_in (example modules Debian ships without a .load file)
# are used by tests in t/filter and t/apache. A missing module is an error, not a silent skip:
# it would change which tests run.
# Left out on purpose (--with-module NAME loads one anyway):
#   perl (mod_perl, enabled by libapache2-mod-perl2's postinst): no test of this suite uses it,
#         and with it loaded children die of SIGSEGV in mod_perl's request cleanup
#         (modperl_config_req_cleanup -> modperl_callback_run_handlers) after responses that went
#         through a fast internal redirect (mod_dir's DirectoryIndex, mod_negotiation): 159
#         crashed prefork children in one run, and proxied requests that reuse a kept-alive
#         backend connection to such a child get 502 depending on timing (t/ssl/proxy.t under
#         prefork, t/apache/if_sections.t), under either MPM;
#   php (libphp8.2): its tests cannot run here (Apache::Test 1.43 looks for php4, php5 or
#         sapi_apache2.c; PHP 8 calls itself mod_php.c, so t/php/all.t skips the directory and
#         extra.conf's <IfModule sapi_apache2.c> PHP setup is off), and t/modules/info.t then
#         fails under both MPMs (it expects mod_php8.2.c, the name Apache::Test derives from the
#         file name).
# Neither is thread-safe: while one is loaded, peruser runs HTTP/2 streams one at a time per
# worker (README, HTTP/2); without them both MPMs run the suite's h2c test as mod_http2 likes.
MODULES_DIR = "/usr/lib/apache2/modules"
MODULES = """
access_compat actions alias allowmethods asis auth_basic auth_digest auth_form authn_anon
authn_core authn_dbd authn_dbm authn_file authn_socache authnz_fcgi authnz_ldap authz_core
authz_dbd authz_dbm authz_groupfile authz_host authz_owner authz_user autoindex brotli buffer
cache cache_disk cache_socache cern_meta cgi charset_lite data dav dav_fs dav_lock dbd deflate
dialup dir dumpio echo env expires ext_filter file_cache filter headers heartbeat
heartmonitor http2 ident imagemap include info lbmethod_bybusyness lbmethod_byrequests
lbmethod_bytraffic lbmethod_heartbeat ldap log_debug log_forensic lua macro md mime mime_magic
negotiation proxy proxy_ajp proxy_balancer proxy_connect proxy_express proxy_fcgi
proxy_fdpass proxy_ftp proxy_hcheck proxy_html proxy_http proxy_http2 proxy_scgi proxy_uwsgi
proxy_wstunnel ratelimit reflector remoteip reqtimeout request rewrite sed session
session_cookie session_crypto session_dbd setenvif slotmem_plain slotmem_shm socache_dbm
socache_memcache socache_redis socache_shmcb speling ssl status substitute unique_id userdir
usertrack vhost_alias xml2enc
bucketeer case_filter case_filter_in
""".split()
MODULE_FILES = {"php": "libphp8.2.so"}     # the rest: mod_NAME.so, identifier NAME_module
MODULE_PACKAGES = {"perl": "libapache2-mod-perl2", "php": "libapache2-mod-php8.2"}
MPM_LINE = re.compile(r"^\s*LoadModule\s+mpm_(\w+)_module\b", re.M)

ASROOT_PM = """package %s;
# Written by tests/conformance/run_httpd_tests.py. Apache::Test refuses to run as root
# (Apache::TestRun::check_runtime_user); this MPM needs a root parent to start workers under
# other users. The server's User is the unprivileged peruser-suite either way.
use strict;
use Apache::TestRun ();
no warnings 'redefine';
*Apache::TestRun::check_runtime_user = sub { 1 };
1;
""" % ASROOT_MODULE


def log(message):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def die(message):
    log("error: " + message)
    sys.exit(2)


# --------------------------------------------------------------------------------------------
# TAP
# --------------------------------------------------------------------------------------------

PLAN = re.compile(r"^1\.\.(\d+)(.*)$")
TEST_LINE = re.compile(r"^(not )?ok\b\s*(\d+)?([^#]*)(?:#\s*(.*))?$")


def parse_tap(text, exit_status, timed_out):
    """The result of one test file, judged as Test::Harness judges it: a plan, every planned
    test run, no failure other than a TODO, and exit status 0. Subtests: number -> ok, not ok,
    skip or todo (a TODO test that fails)."""
    planned, skip_all, todo_in_plan = None, None, set()
    subtests, bailed, seq = {}, None, 0
    for line in text.splitlines():
        m = PLAN.match(line)
        if m and planned is None:
            planned = int(m.group(1))
            rest = m.group(2).strip()
            if planned == 0:
                skip_all = re.sub(r"^#\s*(?i:skip\w*)?:?\s*", "", rest) or "skipped"
            t = re.match(r"todo\s+([\d\s]+);?", rest)
            if t:
                todo_in_plan = {int(n) for n in t.group(1).split()}
            continue
        if line.startswith("Bail out!"):
            bailed = line
            continue
        m = TEST_LINE.match(line)
        if not m:
            continue
        seq = int(m.group(2)) if m.group(2) else seq + 1
        directive = (m.group(4) or "").strip().lower()
        if directive.startswith("skip"):
            state = "skip"
        elif directive.startswith("todo") or seq in todo_in_plan:
            state = "todo" if m.group(1) else "ok"
        else:
            state = "not ok" if m.group(1) else "ok"
        subtests[seq] = state
    failed = sorted(n for n, s in subtests.items() if s == "not ok")
    ran = len(subtests)
    passed = sum(1 for s in subtests.values() if s != "not ok")
    reasons = []
    if timed_out:
        reasons.append("timeout")
    if bailed:
        reasons.append("bailed out")
    if exit_status != 0 and not timed_out:
        reasons.append(f"exit {exit_status}" if exit_status > 0 else f"signal {-exit_status}")
    if planned is None:
        reasons.append("no plan")
    elif planned > 0 and ran != planned:
        reasons.append(f"ran {ran}/{planned}")
    if failed:
        reasons.append("not ok " + compress(failed))
    if skip_all is not None and not reasons:
        result = "skip"
    elif reasons:
        result = "fail"
    else:
        result = "pass"
    return {"result": result, "planned": planned, "ran": ran, "passed": passed,
            "failed": failed, "reasons": reasons, "skip_reason": skip_all,
            "subtests": {str(k): v for k, v in sorted(subtests.items())}}


def compress(numbers):
    """[1,2,3,7,9,10] -> '1-3,7,9-10'"""
    out, start, prev = [], None, None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(out)


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------

def run(cmd, cwd=None, env=None, timeout=600, check=True, quiet=False):
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors="replace", timeout=timeout)
    if check and p.returncode != 0:
        die(f"{' '.join(cmd)} (in {cwd}) exited with {p.returncode}:\n{p.stdout[-4000:]}")
    if not quiet and p.returncode != 0:
        log(f"{' '.join(cmd)} exited with {p.returncode}")
    return p


def ensure_account(name):
    p = subprocess.run(["id", "-u", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if p.returncode == 0:
        return
    log(f"creating system user {name} (no home, no shell)")
    run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name])


def check_prerequisites(suite, mpm_so, modules):
    if os.geteuid() != 0:
        die("run as root (this MPM starts its workers as other users; so does the runner's setup)")
    if not os.path.isfile(os.path.join(suite, "Makefile.PL")):
        die(f"no httpd-tests at {suite} (set HTTPD_TESTS or --suite)")
    if not os.access(APXS, os.X_OK):
        die(f"{APXS} missing: sh scripts/install-deps.sh (apache2-dev)")
    if subprocess.run(["perl", "-MApache::Test", "-e", "1"], stderr=subprocess.DEVNULL).returncode:
        die("Apache::Test missing: sh scripts/install-httpd-tests-deps.sh")
    if not os.path.isfile(mpm_so):
        die(f"{mpm_so} missing: build it with make (or pass --mpm-so)")
    missing = [m for m in modules + ["mpm_prefork"] if not os.path.isfile(module_path(m))]
    if missing:
        packages = sorted({MODULE_PACKAGES.get(m, "apache2-bin") for m in missing})
        die(f"modules missing: {' '.join(missing)} (packages: {' '.join(packages)}; "
            "sh scripts/install-deps.sh && sh scripts/install-httpd-tests-deps.sh)")
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", FIRST_PORT)) == 0:
            die(f"something already listens on port {FIRST_PORT} (another test server?); "
                "the suite needs ports 8529 and up")


def module_path(name):
    return os.path.join(MODULES_DIR, MODULE_FILES.get(name, f"mod_{name}.so"))


def module_identifier(name):
    return f"{name}_module"


def write_inherited_conf(path, modules):
    """The httpd.conf Apache::Test inherits from (-httpd_conf): only what it reads from one
    (LoadModule, TypesConfig, ServerRoot). mpm_prefork is here so that `httpd -V` works and the
    suite is configured for it; the peruser run swaps that one line."""
    lines = ["# Written by tests/conformance/run_httpd_tests.py: the module set of both runs.",
             "ServerRoot /etc/apache2", "TypesConfig /etc/mime.types",
             f"LoadModule mpm_prefork_module {module_path('mpm_prefork')}"]
    lines += [f"LoadModule {module_identifier(m)} {module_path(m)}" for m in modules]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def base_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APACHE_TEST_", "HARNESS_", "PERL5", "PERL_"))
           and k not in ("HTTPD_TEST_SUBTESTS",)}
    # Apache::TestRun re-executes itself under `ulimit -c unlimited` unless this is set, and the
    # re-exec would lose the -I/-M options. APACHE_TEST_* variables that Apache::Test's passenv
    # list holds (USER, GROUP, PORT, ...) force a reconfiguration on every call: kept out.
    env["APACHE_TEST_ULIMIT_SET"] = "1"
    env["LC_ALL"] = "C"
    return env


class Suite:
    """One configured copy of httpd-tests and the t/TEST calls on it."""

    def __init__(self, work, suite_src, timeout, modules):
        self.work = work
        self.top = os.path.join(work, "httpd-tests")
        self.pristine = os.path.join(work, "pristine")
        self.perl_lib = os.path.join(work, "perl")
        self.inherited_conf = os.path.join(work, "inherit-httpd.conf")
        self.timeout = timeout
        self.modules = modules
        self.home = os.path.join(work, "home")      # HOME of the test scripts
        self.env = base_env()

    def t_test(self, *args, timeout=300, check=True):
        cmd = ["perl", f"-I{self.perl_lib}", f"-M{ASROOT_MODULE}", "t/TEST"] + list(args)
        return run(cmd, cwd=self.top, env=self.env, timeout=timeout, check=check)

    def configure(self, suite_src):
        os.makedirs(self.perl_lib)
        with open(os.path.join(self.perl_lib, ASROOT_MODULE + ".pm"), "w") as f:
            f.write(ASROOT_PM)
        inherited = self.inherited_conf
        write_inherited_conf(inherited, self.modules)
        log(f"copying {suite_src} to {self.top}")
        shutil.copytree(suite_src, self.top, symlinks=True)
        for root, dirs, files in os.walk(self.top):       # the pinned copy is read-only
            for name in dirs + files:
                p = os.path.join(root, name)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | 0o200)
        log("configuring: perl Makefile.PL -apxs; t/TEST -configure (builds the suite's c-modules)")
        run(["perl", "Makefile.PL", "-apxs", APXS], cwd=self.top, env=self.env)
        self.t_test("-apxs", APXS, "-httpd_conf", inherited, "-user", SUITE_USER,
                    "-group", SUITE_USER, "-configure", timeout=900)
        conf = self.read_conf()
        if len(MPM_LINE.findall(conf)) != 1 or "mpm_prefork_module" not in conf:
            die("the generated configuration does not load exactly mpm_prefork")
        # The server's User owns the tree, as a developer owns a checkout: the suite writes into
        # htdocs (dav, cache, uploads) from server children and CGIs.
        os.makedirs(self.home)
        run(["chown", "-R", f"{SUITE_USER}:{SUITE_USER}", self.top, self.home])
        self.check_readable_by_suite_user()
        run(["cp", "-a", self.top, self.pristine])

    def check_readable_by_suite_user(self):
        probe = ("test -r t/htdocs/index.html && test -x t/htdocs/modules/cgi/env.pl "
                 "&& test -w t/htdocs && test -r t/conf/httpd.conf")
        p = subprocess.run(["sh", "-c", probe], cwd=self.top, user=SUITE_USER, group=SUITE_USER,
                           extra_groups=[])
        if p.returncode != 0:
            die(f"{SUITE_USER} cannot read or execute the suite's files under {self.top}")

    def conf_path(self):
        return os.path.join(self.top, "t", "conf", "httpd.conf")

    def read_conf(self):
        with open(self.conf_path()) as f:
            return f.read()

    def restore_pristine(self, keep_as):
        if os.path.exists(self.top):
            os.rename(self.top, keep_as)
        run(["cp", "-a", self.pristine, self.top])

    def all_conf_files(self):
        out = []
        for root, _, files in os.walk(os.path.join(self.top, "t", "conf")):
            out += [os.path.join(root, f) for f in files if f.endswith(".conf")]
        return sorted(out)

    def loaded_mpms(self):
        found = []
        for path in self.all_conf_files():
            with open(path) as f:
                found += MPM_LINE.findall(f.read())
        return found

    def start_cmd(self):
        p = run(["perl", f"-I{self.perl_lib}", f"-M{ASROOT_MODULE}", "-MApache::TestConfig", "-e",
                 "print Apache::TestConfig->thaw->httpd_config->server->start_cmd"],
                cwd=self.top, env=self.env)
        return p.stdout.strip().splitlines()[-1].split()

    def configtest(self):
        return run(self.start_cmd() + ["-t"], cwd=self.top, env=self.env, check=False, quiet=True)

    # ---- the server ----------------------------------------------------------------------

    def error_log(self):
        return os.path.join(self.top, "t", "logs", "error_log")

    def error_log_size(self):
        try:
            return os.path.getsize(self.error_log())
        except OSError:
            return 0

    def pidfile(self):
        return os.path.join(self.top, "t", "logs", "httpd.pid")

    def server_pid(self):
        try:
            with open(self.pidfile()) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self):
        p = self.t_test("-start-httpd", timeout=240, check=False)
        pid = self.server_pid()
        if p.returncode != 0 or not pid:
            log(p.stdout[-3000:])
            return None
        return pid

    def stop(self):
        pid = self.server_pid()
        if not pid:
            return
        self.t_test("-stop", timeout=120, check=False)
        for _ in range(300):
            if not pid_alive(pid):
                return
            time.sleep(0.1)
        log(f"server {pid} (from its PidFile) still runs after t/TEST -stop; SIGTERM to it")
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            if not pid_alive(pid):
                return
            time.sleep(0.1)
        log(f"server {pid} did not exit; SIGKILL to it")
        os.kill(pid, signal.SIGKILL)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:   # a zombie whose parent has not reaped it yet counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The MPM switch
# --------------------------------------------------------------------------------------------

def switch_to_peruser(suite, mpm_so):
    """Replaces the mpm_prefork LoadModule (and its <IfModule> wrapper) by this MPM and its
    environment; the rest of the generated configuration stays as it is."""
    wrapped = re.compile(r"<IfModule !mod_mpm_(?:prefork|worker|event)\.c>\s*\n"
                         r"\s*LoadModule\s+mpm_\w+_module\s+\S+\s*\n</IfModule>\s*\n")
    block = (
        "# tests/conformance/run_httpd_tests.py: this MPM instead of mpm_prefork.\n"
        f'LoadModule mpm_peruser_module "{mpm_so}"\n'
        "# The multiplexers' own account: no environment may share it.\n"
        f"MultiplexerUser {MUX_USER}\nMultiplexerGroup {MUX_USER}\n"
        "# Every request is served as the suite's User, as prefork's children serve it.\n"
        f"<Processor {ENVIRONMENT}>\n    User {SUITE_USER}\n    Group {SUITE_USER}\n"
        "    # prefork's StartServers 2 in this configuration\n    MinProcessors 2\n"
        "</Processor>\n"
        "# The main server's environment, inherited by every vhost that names none.\n"
        f"ServerEnvironment {ENVIRONMENT}\n"
        "# prefork leaves a connection in the listen queue until a child is free; this holds one\n"
        "# for a saturated environment as long as httpd's Timeout (60 s, the suite sets none)\n"
        "# instead of 5 s, after which peruser answers 503 (closes, on TLS). Workers held by\n"
        "# idle kept-alive connections (KeepAliveTimeout 5 s) of mod_proxy's backend pools\n"
        "# otherwise race that 5 s: t/ssl/proxy.t got a 503 once.\n"
        "ProcessorWaitTimeout 60\n"
        "# The suite writes MaxRequestsPerChild 0 for every MPM it knows (prefork's children never\n"
        "# recycle in it); peruser's own default is 1000. A worker that recycles takes the\n"
        "# singleton watchdogs it holds with it, and mod_watchdog lets another child run them only\n"
        "# 10 s later: t/modules/heartbeat.t then sees no heartbeat in its 5 s.\n"
        "MaxConnectionsPerChild 0\n")
    text = suite.read_conf()
    matches = list(wrapped.finditer(text))
    if not matches:
        die("no <IfModule !mod_mpm_prefork.c> LoadModule block in the generated httpd.conf")
    out, last = [], 0
    for i, m in enumerate(matches):
        out.append(text[last:m.start()])
        if i == 0:
            out.append(block)
        last = m.end()
    out.append(text[last:])
    text = "".join(out)
    text = MPM_LINE.sub(lambda m: m.group(0) if m.group(1) == "peruser" else "# " + m.group(0),
                        text)
    with open(suite.conf_path(), "w") as f:
        f.write(text)
    mpms = suite.loaded_mpms()
    if mpms != ["peruser"]:
        die(f"after the switch the configuration loads these MPMs: {mpms}")
    tell_apache_test_the_mpm(suite, mpm_so)

    p = suite.configtest()
    if p.returncode == 0:
        log("configtest: Syntax OK with a global ServerEnvironment")
        return "global"
    if "ServerEnvironment" not in p.stdout:
        die("configtest of the peruser configuration failed:\n" + tail_errors(p.stdout))
    log("FALLBACK: configtest refuses ServerEnvironment outside <VirtualHost> with this build:\n"
        + tail_errors(p.stdout) +
        "\n  -> putting `ServerEnvironment suite` into every <VirtualHost> of the generated "
        "configuration instead. The main server (port 8529, most of the suite) then has no "
        "environment and answers 503: expect many differences until the MPM supports it.")
    text = text.replace(f"ServerEnvironment {ENVIRONMENT}\n", "", 1)
    with open(suite.conf_path(), "w") as f:
        f.write(text)
    count = 0
    for path in suite.all_conf_files():
        with open(path) as f:
            lines = f.readlines()
        new = []
        for line in lines:
            new.append(line)
            if re.match(r"^\s*<VirtualHost\b", line, re.I):
                indent = re.match(r"^\s*", line).group(0)
                new.append(f"{indent}    ServerEnvironment {ENVIRONMENT}\n")
                count += 1
        if new != lines:
            with open(path, "w") as f:
                f.writelines(new)
    log(f"FALLBACK: ServerEnvironment {ENVIRONMENT} added to {count} <VirtualHost> sections")
    p = suite.configtest()
    if p.returncode != 0:
        die("configtest of the peruser configuration (fallback) failed:\n" + tail_errors(p.stdout))
    return "per-vhost (fallback)"


def tell_apache_test_the_mpm(suite, mpm_so):
    """Apache::Test recorded the server it configured (t/conf/apache_test_config.pm): its MPM and
    its module list, which tests read (t/modules/info.t compares the list with /server-info,
    need_apache_mpm() compares the MPM). The peruser run's record, and the httpd.conf it was
    inherited from, name this MPM instead of prefork, as if Apache::Test had configured the
    suite for it."""
    # Apache::Test::config() in every test script parses the inherited httpd.conf again (and runs
    # httpd -V on it): that one names this MPM too from now on.
    with open(suite.inherited_conf) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^LoadModule mpm_prefork_module .*$",
                      f"LoadModule mpm_peruser_module {mpm_so}", text)
    if n != 1:
        die(f"{suite.inherited_conf}: no mpm_prefork LoadModule to replace")
    with open(suite.inherited_conf, "w") as f:
        f.write(text)
    path = os.path.join(suite.top, "t", "conf", "apache_test_config.pm")
    with open(path) as f:
        text = f.read()
    changes = [
        (r"'mod_mpm_prefork\.c' => '[^']*'", f"'mod_mpm_peruser.c' => '{mpm_so}'"),
        (r"'mpm' => 'prefork'", "'mpm' => 'peruser'"),
        (r"'SERVER_MPM' => 'prefork'", "'SERVER_MPM' => 'peruser'"),
    ]
    for pattern, replacement in changes:
        text, n = re.subn(pattern, replacement, text)
        if n == 0:
            die(f"{path}: no {pattern} to replace (Apache::Test's record of the MPM)")
    with open(path, "w") as f:
        f.write(text)


def tail_errors(text):
    lines = [l for l in text.splitlines()
             if not re.search(r":(trace\d|debug|info)\]", l) and l.strip()]
    return "\n".join("    " + l for l in lines[-12:])


# --------------------------------------------------------------------------------------------
# Running the files
# --------------------------------------------------------------------------------------------

def test_files(top, only):
    if only:
        files = []
        for t in only:
            t = os.path.normpath(t)
            if not os.path.isfile(os.path.join(top, t)):
                die(f"no such test file: {t}")
            files.append(t)
        return files, {}
    found = []
    for root, _, names in os.walk(os.path.join(top, "t")):
        for n in names:
            if n.endswith(".t"):
                found.append(os.path.relpath(os.path.join(root, n), top))
    found.sort()
    # t/TEST runs a directory's all.t first; if it skips, the whole directory is skipped.
    ordered, groups = [], {}
    for t in found:
        d = os.path.dirname(t)
        if os.path.join(d, "all.t") in found:
            groups.setdefault(d, []).append(t)
    for t in found:
        d = os.path.dirname(t)
        if d in groups:
            if t == os.path.join(d, "all.t") or t in ordered:
                continue
            if os.path.join(d, "all.t") not in ordered:
                ordered.append(os.path.join(d, "all.t"))
        ordered.append(t)
    return ordered, groups


# Children that died of a signal, as each MPM's parent logs them.
CRASH = re.compile(r"AH00052: child pid \d+ exit signal [^(]*\((\d+)\)"                 # prefork
                   r"|peruser: +(multiplexer|worker) [^\n]*?was killed by signal (\d+)")  # peruser


def crashes_since(suite, offset):
    """Crashed children logged in the error_log from `offset` on: {'worker': n, ...}."""
    found = {}
    try:
        with open(suite.error_log(), "rb") as f:
            f.seek(offset)
            for raw in f:
                if b"signal" not in raw:
                    continue
                m = CRASH.search(raw.decode("utf-8", "replace"))
                if m:
                    kind = m.group(2) or "child"
                    found[kind] = found.get(kind, 0) + 1
    except OSError:
        pass
    return found


def run_file(suite, t, out_dir):
    env = dict(suite.env)
    env.update({"HARNESS_ACTIVE": "1", "HARNESS_VERSION": "3.44", "PERL5LIB": suite.top,
                "APACHE_TEST_HOSTNAME": "test.host.name", "APACHE_TEST_HOSTTYPE": "z80",
                "HOME": suite.home, "USER": SUITE_USER, "LOGNAME": SUITE_USER})
    out_path = os.path.join(out_dir, t.replace("/", "_") + ".log")
    log_offset = suite.error_log_size()
    started = time.monotonic()
    with open(out_path, "w") as out, open(out_path + ".stderr", "w") as err:
        # The client runs as the server's User, as when a developer runs the suite from a
        # checkout of their own: what a test creates (the UDS backend's socket in proxy.t,
        # files under htdocs) is then usable by the server's children, under both MPMs.
        proc = subprocess.Popen(["perl", "-w", t], cwd=suite.top, env=env, stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
                                user=SUITE_USER, group=SUITE_USER, extra_groups=[])
        timed_out, status = False, None
        try:
            status = proc.wait(timeout=suite.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # The test's own process group, started here: a timed-out test and what it forked,
            # or a backend it forked and left behind (proxy.t's UDS server waits in accept()
            # forever when the proxy never connects), so nothing of one file outlives it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            if status is None:
                status = proc.wait()
    seconds = time.monotonic() - started
    with open(out_path, errors="replace") as f:
        tap = f.read()
    r = parse_tap(tap, status, timed_out)
    r["seconds"] = round(seconds, 1)
    r["log"] = out_path
    r["crashes"] = crashes_since(suite, log_offset)
    return r


def run_mode(mode, suite, files, groups, out_root):
    out_dir = os.path.join(out_root, mode)
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_suite_files()
    results, started = {}, time.monotonic()
    pid = suite.start()
    if not pid:
        die(f"the {mode} server did not start (see {suite.top}/t/logs/error_log)")
    log(f"[{mode}] server up (pid {pid}); {len(files)} test files, timeout {suite.timeout}s each")
    skipped_dirs = set()
    try:
        for i, t in enumerate(files, 1):
            d = os.path.dirname(t)
            if d in skipped_dirs and os.path.basename(t) != "all.t":
                results[t] = {"result": "skip", "skip_reason": f"{d}/all.t skipped the directory",
                              "planned": 0, "ran": 0, "passed": 0, "failed": [], "reasons": [],
                              "subtests": {}, "seconds": 0, "crashes": {}}
                continue
            r = run_file(suite, t, out_dir)
            if os.path.basename(t) == "all.t" and d in groups and r["result"] == "skip":
                skipped_dirs.add(d)
            if not pid_alive(pid):
                r["result"] = "fail"
                r["reasons"].append("the server died")
                log(f"[{mode}] the server (pid {pid}) died during {t}; restarting it")
                pid = suite.start()
                if not pid:
                    die(f"the {mode} server did not restart")
            results[t] = r
            crashed = ", ".join(f"{n} {k}" for k, n in sorted(r["crashes"].items()))
            log(f"[{mode}] {i}/{len(files)} {t}: {describe(r)} ({r['seconds']}s)"
                + (f" [children crashed: {crashed}]" if crashed else ""))
    finally:
        suite.stop()
    return results, time.monotonic() - started


def remove_stale_suite_files():
    """t/modules/proxy.t binds a fixed path, /tmp/test-ptf.sock (its ProxyPass unix: backend), and
    unlinks it first; one left by an earlier run as another user (root) cannot be unlinked by
    the suite's user in sticky /tmp, and the UDS tests would fail for that reason alone."""
    for path in ("/tmp/test-ptf.sock", "/tmp/test-ptf.sock.marker"):
        if os.path.lexists(path):
            log(f"removing {path} left by an earlier run of t/modules/proxy.t")
            os.unlink(path)


def describe(r):
    if r["result"] == "skip":
        return "skip" + (f" ({r['skip_reason']})" if r.get("skip_reason") else "")
    counts = f"{r['passed']}/{r['planned'] if r['planned'] is not None else '?'}"
    if r["result"] == "pass":
        return f"pass {counts}"
    return f"FAIL {counts}: " + "; ".join(r["reasons"])


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------

def load_known_failures():
    known = {}
    if os.path.exists(KNOWN_FAILURES):
        with open(KNOWN_FAILURES) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    name, _, cause = line.partition(" ")
                    known[name] = cause.strip()
    return known


def compare(files, prefork, peruser):
    rows, regressions = [], []
    for t in files:
        a, b = prefork[t], peruser[t]
        worse = []
        for n, state in a["subtests"].items():
            if state in ("ok", "todo", "skip") and b["subtests"].get(n, "missing") in ("not ok", "missing"):
                worse.append(int(n))
        file_regressed = a["result"] != "fail" and b["result"] == "fail"
        regressed = file_regressed or bool(worse)
        rows.append((t, a, b, sorted(worse), regressed))
        if regressed:
            regressions.append(t)
    return rows, regressions


def subtest_counts(results):
    ok = sum(1 for r in results.values() for s in r["subtests"].values() if s != "not ok")
    bad = sum(1 for r in results.values() for s in r["subtests"].values() if s == "not ok")
    missing = sum(max(0, (r["planned"] or 0) - r["ran"]) for r in results.values())
    return ok, bad, missing


def file_counts(results):
    c = {"pass": 0, "skip": 0, "fail": 0}
    for r in results.values():
        c[r["result"]] += 1
    return c


def print_report(rows, regressions, prefork, peruser, known, times, env_mode):
    width = max([len(r[0]) for r in rows] + [10])
    print()
    print(f"{'test file':<{width}}  {'prefork':<{COLUMN}}  {'peruser':<{COLUMN}}  differing subtests")
    print("-" * (width + 2 * COLUMN + 40))
    for t, a, b, worse, regressed in rows:
        mark = "REGRESSION " if regressed else ""
        diff = (mark + ("subtests " + compress(worse) + " pass under prefork only" if worse else
                        "file fails under peruser only" if regressed else "")).strip()
        if not diff and a["result"] != b["result"]:
            diff = ("(skipped under prefork)" if a["result"] == "skip" else
                    "(skipped under peruser)" if b["result"] == "skip" else
                    "(passes under peruser only)" if b["result"] == "pass" else "")
        if a["result"] == "fail" and t in known:
            diff = (diff + "  " if diff else "") + "[known prefork failure]"
        crashes = "; ".join(f"{mode} {', '.join(f'{n} {k}' for k, n in sorted(r['crashes'].items()))}"
                            for mode, r in (("prefork", a), ("peruser", b)) if r.get("crashes"))
        if crashes:
            diff = (diff + "  " if diff else "") + f"[children crashed: {crashes}]"
        print(f"{t:<{width}}  {short(a):<{COLUMN}}  {short(b):<{COLUMN}}  {diff}")
    print()
    for mode, res in (("prefork", prefork), ("peruser", peruser)):
        fc = file_counts(res)
        ok, bad, missing = subtest_counts(res)
        crashed = {}
        for r in res.values():
            for k, n in r.get("crashes", {}).items():
                crashed[k] = crashed.get(k, 0) + n
        crashed = ", ".join(f"{n} {k}" for k, n in sorted(crashed.items())) or "none"
        print(f"{mode}: {len(res)} files: {fc['pass']} pass, {fc['skip']} skip, {fc['fail']} fail; "
              f"subtests: {ok} ok, {bad} not ok, {missing} planned but not run; "
              f"children crashed: {crashed}; {times[mode] / 60:.1f} min")
    print(f"peruser's main server environment: {env_mode}")
    unknown = sorted(t for t, r in prefork.items() if r["result"] == "fail" and t not in known)
    if unknown:
        print("prefork failures not in known-prefork-failures.txt: " + " ".join(unknown))
    stale = sorted(t for t in known if t in prefork and prefork[t]["result"] != "fail")
    if stale:
        print("listed in known-prefork-failures.txt but passing under prefork now: " + " ".join(stale))
    if regressions:
        print("regressions (pass under prefork, fail under peruser): " + " ".join(regressions))
    print()
    print(f"{len(rows) - len(regressions)} passed, {len(regressions)} failed", flush=True)


COLUMN = 38


def short(r):
    if r["result"] == "skip":
        return "skip"
    counts = f"{r['passed']}/{r['planned'] if r['planned'] is not None else '?'}"
    if r["result"] == "pass":
        return f"pass {counts}"
    why = [x for x in r["reasons"] if not x.startswith("not ok")]
    return (f"FAIL {counts}" + (f" ({', '.join(why)})" if why else ""))[:COLUMN]


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="t/DIR/FILE.t", help="run only these test files")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, TAP, results)")
    ap.add_argument("--mpm-so", default=os.path.join(REPO, "build", "mod_mpm_peruser.so"))
    ap.add_argument("--timeout", type=int, default=180, help="seconds per test file (default 180)")
    ap.add_argument("--with-module", action="append", default=[], metavar="NAME",
                    help="load this module too (perl, php; see MODULES): repeatable")
    ap.add_argument("--suite", default=os.environ.get("HTTPD_TESTS")
                    or os.path.normpath(os.path.join(REPO, "..", "shared", "httpd-tests")))
    args = ap.parse_args()
    t0 = time.monotonic()
    suite_src = os.path.abspath(args.suite)
    modules = list(MODULES) + [m for m in args.with_module if m not in MODULES]
    check_prerequisites(suite_src, args.mpm_so, modules)
    ensure_account(SUITE_USER)
    ensure_account(MUX_USER)

    work = tempfile.mkdtemp(prefix="peruser-conformance-")
    os.chmod(work, 0o755)      # the suite's user must reach its tree inside
    log(f"work dir {work}")
    status = 2
    try:
        # The MPM as it is now: a rebuild during the run cannot change the running server.
        mpm_so = os.path.join(work, "mod_mpm_peruser.so")
        shutil.copy2(args.mpm_so, mpm_so)
        os.chmod(mpm_so, 0o644)
        log(f"MPM: {args.mpm_so} (copied; mtime "
            f"{datetime.datetime.fromtimestamp(os.stat(args.mpm_so).st_mtime):%Y-%m-%d %H:%M:%S})")
        suite = Suite(work, suite_src, args.timeout, modules)
        suite.configure(suite_src)
        files, groups = test_files(suite.top, args.only)
        out_root = os.path.join(work, "tap")
        times, results = {}, {}

        results["prefork"], times["prefork"] = run_mode("prefork", suite, files, groups, out_root)
        suite.restore_pristine(keep_as=os.path.join(work, "run-prefork"))
        env_mode = switch_to_peruser(suite, mpm_so)
        results["peruser"], times["peruser"] = run_mode("peruser", suite, files, groups, out_root)
        os.rename(suite.top, os.path.join(work, "run-peruser"))

        rows, regressions = compare(files, results["prefork"], results["peruser"])
        with open(os.path.join(work, "results.json"), "w") as f:
            json.dump({"files": files, "results": results, "times": times,
                       "regressions": regressions, "environment": env_mode}, f, indent=1)
        print_report(rows, regressions, results["prefork"], results["peruser"],
                     load_known_failures(), times, env_mode)
        log(f"total {(time.monotonic() - t0) / 60:.1f} min")
        status = 1 if regressions else 0
    finally:
        if args.keep:
            log(f"kept {work} (run-prefork/t/logs, run-peruser/t/logs, tap/, results.json)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
