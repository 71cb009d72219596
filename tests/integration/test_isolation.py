"""Confinement per environment: Chroot, MultiplexerChroot, Cgroup and NiceValue, in a real
apache2 with real users, jails and cgroups (the machine is root and has /sys/fs/cgroup)."""
import http.client
import os
import re
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import make_site, php_config, site_vhost
from harness import Apache, free_port, serving

JAILS = "/srv/peruser-tests"   # /tmp is world-writable, so no jail can live below it
CGROUP_V1_PIDS = "/sys/fs/cgroup/pids"
CGROUP_V2 = "/sys/fs/cgroup/unified"

WHERE_CGI = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
read marker < /jail-marker
echo "marker=$marker"
if [ -e /etc/passwd ]; then echo "passwd=visible"; else echo "passwd=absent"; fi
"""

FORK_CGI = """#!/usr/bin/python3
# Forks 10 children that stay alive together; reports how many forks the kernel allowed.
import os, time
print("Content-Type: text/plain\\r\\n\\r\\n", end="", flush=True)
kids, failed = [], 0
for _ in range(10):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(f"forked={len(kids)} failed={failed}")
"""


def get(port, host, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    conn.close()
    return resp.status, body


def root_dir(path, mode=0o755):
    os.makedirs(path, exist_ok=True)
    os.chown(path, 0, 0)
    os.chmod(path, mode)
    return path


def copy_into_jail(jail, program):
    """Copies a dynamically linked program and the libraries ldd names into the jail."""
    files = [program]
    for line in subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            files.append(m.group(1))
    for f in files:
        target = jail + f
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.realpath(f), target)


def make_jail(name, owner):
    """A root-owned jail with /bin/sh, a marker file, and a document root owned by `owner`."""
    jail = root_dir(os.path.join(root_dir(JAILS), f"{name}-{uuid.uuid4().hex[:8]}"))
    copy_into_jail(jail, "/bin/sh")
    with open(os.path.join(jail, "jail-marker"), "w") as f:
        f.write(f"inside-{name}\n")
    os.chmod(os.path.join(jail, "jail-marker"), 0o644)
    htdocs = os.path.join(jail, "htdocs")
    os.makedirs(os.path.join(htdocs, "cgi-bin"))
    with open(os.path.join(htdocs, "index.html"), "w") as f:
        f.write(f"jailed site {name}\n")
    with open(os.path.join(htdocs, "where.php"), "w") as f:
        f.write('<?php echo "uid=", posix_getuid(), " marker=", trim(file_get_contents("/jail-marker")), '
                '" passwd=", file_exists("/etc/passwd") ? "visible" : "absent", "\\n";\n')
    with open(os.path.join(htdocs, "cgi-bin", "where.cgi"), "w") as f:
        f.write(WHERE_CGI)
    for path, mode in ((htdocs, 0o755), (os.path.join(htdocs, "cgi-bin"), 0o755),
                       (os.path.join(htdocs, "cgi-bin", "where.cgi"), 0o755),
                       (os.path.join(htdocs, "index.html"), 0o644), (os.path.join(htdocs, "where.php"), 0o644)):
        os.chown(path, *owner)
        os.chmod(path, mode)
    return jail


def workers_of(apache, uid):
    return [pid for pid, u, _ in apache.children() if u == uid]


def jailed_worker(apache):
    """env-a's one worker (env-c runs as the same user, outside the jail)."""
    (pid,) = [p for p in workers_of(apache, apache.ids["a"][0]) if os.readlink(f"/proc/{p}/root") == apache.jail]
    return pid


def configtest_error(body):
    apache = Apache(body)
    apache.write_config()
    try:
        result = apache.configtest()
        assert result.returncode != 0, f"configtest accepted:\n{body}"
        return result.stdout + result.stderr
    finally:
        apache.cleanup()


# ---- configuration errors ------------------------------------------------------------------

def processor(extra):
    return f"<Processor p>\n User peruser-a\n Group peruser-a\n{extra}</Processor>\n"


@pytest.fixture
def scratch(accounts):
    """Directories with the defects a jail must not have, under a root-owned base."""
    base = root_dir(os.path.join(root_dir(JAILS), f"bad-{uuid.uuid4().hex[:8]}"))
    paths = {"base": base}
    paths["tenant_owned"] = os.path.join(base, "tenant-owned")
    os.mkdir(paths["tenant_owned"])
    os.chown(paths["tenant_owned"], *accounts["peruser-a"])
    paths["group_writable"] = root_dir(os.path.join(base, "group-writable"), 0o775)
    paths["below_tenant"] = root_dir(os.path.join(paths["tenant_owned"], "jail"))
    paths["file"] = os.path.join(base, "file")
    open(paths["file"], "w").close()
    paths["link"] = os.path.join(base, "link")
    os.symlink(root_dir(os.path.join(base, "real")), paths["link"])
    yield paths
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("key,directive,needle", [
    ("tenant_owned", "Chroot", r"Chroot: {path} is owned by uid \d+; the jail directory and every directory "
                               r"above it must be owned by root"),
    ("below_tenant", "Chroot", r"Chroot: {parent} is owned by uid \d+"),
    ("group_writable", "Chroot", r"Chroot: {path} has mode 0775, writable by group or others"),
    ("file", "Chroot", r"Chroot: {path} is not a directory"),
    ("link", "Chroot", r"Chroot: {path} is a symbolic link; give the real path"),
    ("missing", "Chroot", r"Chroot: {path} does not exist"),
    ("group_writable", "MultiplexerChroot", r"MultiplexerChroot: {path} has mode 0775"),
    ("tenant_owned", "MultiplexerChroot", r"MultiplexerChroot: {path} is owned by uid \d+"),
])
def test_a_jail_that_is_not_root_owned_and_closed_is_refused(scratch, key, directive, needle):
    path = scratch.get(key, os.path.join(scratch["base"], "missing"))
    parent = os.path.dirname(path)
    body = processor(f" Chroot {path}\n") if directive == "Chroot" else f"MultiplexerChroot {path}\n"
    out = configtest_error(body)
    assert re.search(needle.format(path=re.escape(path), parent=re.escape(parent)), out), out


@pytest.mark.parametrize("body,needle", [
    (processor(" Chroot relative/jail\n"), r"Chroot relative/jail: the path must be absolute"),
    (processor(" Chroot /\n"), r"a chroot to / confines nothing"),
    (processor(" Chroot /srv/../etc\n"), r"write the path without '\.', '\.\.'"),
    (processor(" Chroot /srv\n Chroot /srv\n"), r"Chroot is given twice in <Processor p>"),
    (processor(" Cgroup /tmp\n"), r"Cgroup /tmp is not a directory on a cgroup file system"),
    (processor(" Cgroup /sys/fs/cgroup/pids/no-such-peruser-group\n"),
     r"Cgroup: /sys/fs/cgroup/pids/no-such-peruser-group does not exist"),
    (processor(" Cgroup /sys/fs/cgroup/pids/cgroup.procs\n"), r"is not a directory on a cgroup file system"),
    (processor(" Cgroup /sys/fs/cgroup/pids\n Cgroup /sys/fs/cgroup/pids/\n"),
     r"Cgroup /sys/fs/cgroup/pids is given twice"),
    (processor(" NiceValue 20\n"), r"NiceValue 20 is out of range \(-20 to 19\)"),
    (processor(" NiceValue high\n"), r"NiceValue takes a whole number, not 'high'"),
    (processor(" NiceValue 1\n NiceValue 2\n"), r"NiceValue is given twice"),
    ("ChrootDir /srv\n", r"ChrootDir /srv is not supported by this MPM"),
])
def test_confinement_directives_are_checked_at_configtest(accounts, body, needle):
    out = configtest_error(body)
    assert re.search(needle, out), out
    if "ChrootDir" not in body:   # checked after parsing, so it has no line
        assert re.search(r"line \d+ of \S+httpd.conf", out), "the error names the line"


def test_valid_confinement_passes_configtest(accounts):
    jail = root_dir(os.path.join(root_dir(JAILS), f"ok-{uuid.uuid4().hex[:8]}"))
    try:
        apache = Apache(processor(f" Chroot {jail}/\n Cgroup {CGROUP_V1_PIDS}\n NiceValue -3\n")
                        + f"MultiplexerChroot {jail}\n")
        apache.write_config()
        result = apache.configtest()
        apache.cleanup()
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        shutil.rmtree(jail, ignore_errors=True)


# ---- a server with confined environments ------------------------------------------------------

def make_cgroup(path):
    os.makedirs(path, exist_ok=True)
    return path


def remove_cgroup(path):
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)   # its last processes are still exiting


@pytest.fixture(scope="module")
def confined(module, accounts):
    """env-a: jailed, in a v1 pids cgroup and a v2 cgroup, nice 5, one worker.
    env-b: not jailed, in its own pids cgroup, default priority. Multiplexers jailed too."""
    port = free_port()
    tag = uuid.uuid4().hex[:8]
    a_ids, b_ids = accounts["peruser-a"], accounts["peruser-b"]
    jail = make_jail("a", a_ids)
    mux_jail = root_dir(os.path.join(JAILS, f"mux-{tag}"))
    cg = {"a_pids": make_cgroup(f"{CGROUP_V1_PIDS}/peruser-test-a-{tag}"),
          "a_v2": make_cgroup(f"{CGROUP_V2}/peruser-test-a-{tag}"),
          "b_pids": make_cgroup(f"{CGROUP_V1_PIDS}/peruser-test-b-{tag}")}
    apache = Apache("")
    b_site = make_site(apache.root, *b_ids, "b")
    fork_cgi = os.path.join(b_site, "cgi-bin", "fork.cgi")
    for cgi_dir in (os.path.join(jail, "htdocs", "cgi-bin"), os.path.join(b_site, "cgi-bin")):
        path = os.path.join(cgi_dir, "fork.cgi")
        with open(path, "w") as f:
            f.write(FORK_CGI)
        os.chown(path, *(a_ids if cgi_dir.startswith(jail) else b_ids))
        os.chmod(path, 0o755)
    # The jailed fork CGI needs python inside the jail: run A's fork test unjailed instead, in
    # env-c (same cgroup as A), so the jail stays minimal.
    c_site = make_site(apache.root, *a_ids, "c")
    shutil.copy(fork_cgi, os.path.join(c_site, "cgi-bin", "fork.cgi"))
    os.chown(os.path.join(c_site, "cgi-bin", "fork.cgi"), *a_ids)
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MinMultiplexers 1
MinSpareProcessors 0
MultiplexerChroot {mux_jail}
{php_config()}
<Directory />
    Require all granted
    Options +ExecCGI
</Directory>
<Processor env-a>
    User peruser-a
    Group peruser-a
    Chroot {jail}
    Cgroup {cg["a_pids"]}
    Cgroup {cg["a_v2"]}
    NiceValue 5
    MinProcessors 1
    MaxProcessors 1
</Processor>
<Processor env-b>
    User peruser-b
    Group peruser-b
    Cgroup {cg["b_pids"]}
    MinProcessors 1
    MaxProcessors 1
</Processor>
<Processor env-c>
    User peruser-a
    Group peruser-a
    Cgroup {cg["a_pids"]}
    MinProcessors 0
    MaxProcessors 1
</Processor>
<VirtualHost 127.0.0.1:{port}>
    ServerName a.test
    DocumentRoot /htdocs
    ScriptAlias /cgi-bin/ /htdocs/cgi-bin/
    ServerEnvironment env-a
</VirtualHost>
{site_vhost(port, "b.test", b_site, "env-b")}
{site_vhost(port, "c.test", c_site, "env-c")}
""")
    apache.port, apache.jail, apache.mux_jail, apache.cgroups = port, jail, mux_jail, cg
    apache.ids = {"a": a_ids, "b": b_ids}
    apache.start(ports=(port,))
    apache.wait_children(3)   # 1 multiplexer, 1 worker of env-a, 1 of env-b
    yield from serving(apache, log_tail=3000)
    for path in cg.values():
        remove_cgroup(path)
    shutil.rmtree(jail, ignore_errors=True)
    shutil.rmtree(mux_jail, ignore_errors=True)


def test_jailed_environment_serves_static_php_and_cgi_from_inside_its_jail(confined):
    status, body = get(confined.port, "a.test", "/index.html")
    assert (status, body) == (200, "jailed site a\n")
    status, body = get(confined.port, "a.test", "/where.php")
    assert status == 200, body
    assert body.strip() == f"uid={confined.ids['a'][0]} marker=inside-a passwd=absent"
    status, body = get(confined.port, "a.test", "/cgi-bin/where.cgi")
    assert status == 200, body
    assert "marker=inside-a" in body and "passwd=absent" in body


def test_jailed_workers_have_the_jail_as_root_and_others_do_not(confined):
    (b_worker,) = workers_of(confined, confined.ids["b"][0])
    assert [os.readlink(f"/proc/{p}/root") for p in workers_of(confined, confined.ids["a"][0])].count(
        confined.jail) == 1
    assert os.readlink(f"/proc/{b_worker}/root") == "/"
    status, body = get(confined.port, "b.test", "/cgi-bin/id.cgi")
    assert status == 200 and f"uid={confined.ids['b'][0]}" in body


def test_multiplexers_run_in_their_jail(confined):
    muxes = [pid for pid, uid, _ in confined.children() if uid == 33]   # www-data
    assert muxes, confined.children()
    for pid in muxes:
        assert os.readlink(f"/proc/{pid}/root") == confined.mux_jail
    assert get(confined.port, "b.test", "/index.html") == (200, "site b\n")


def cgroup_lines(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().splitlines()


def test_workers_are_in_their_environments_cgroups(confined):
    a_worker = jailed_worker(confined)
    (b_worker,) = workers_of(confined, confined.ids["b"][0])
    a_lines, b_lines = cgroup_lines(a_worker), cgroup_lines(b_worker)
    a_name = os.path.basename(confined.cgroups["a_pids"])
    assert any(re.fullmatch(rf"\d+:pids:/{a_name}", line) for line in a_lines), a_lines
    assert f"0::/{os.path.basename(confined.cgroups['a_v2'])}" in a_lines, a_lines
    assert any(re.fullmatch(rf"\d+:pids:/{os.path.basename(confined.cgroups['b_pids'])}", line)
               for line in b_lines), b_lines
    with open(os.path.join(confined.cgroups["a_pids"], "cgroup.procs")) as f:
        assert str(a_worker) in f.read().split()
    # The multiplexer and the parent stay where Apache started.
    assert not any(a_name in line for line in cgroup_lines(confined.pid()))


def test_a_pids_limit_on_one_tenants_cgroup_limits_its_cgi_and_not_the_others(confined):
    limit = os.path.join(confined.cgroups["a_pids"], "pids.max")
    with open(os.path.join(confined.cgroups["a_pids"], "pids.current")) as f:
        current = int(f.read())
    with open(limit, "w") as f:
        f.write(str(current + 4))   # room for env-c's worker, the CGI and two of its children
    try:
        status, body = get(confined.port, "c.test", "/cgi-bin/fork.cgi")
        assert status == 200, body
        forked, failed = map(int, re.search(r"forked=(\d+) failed=(\d+)", body).groups())
        assert failed > 0 and forked < 10, f"tenant A's CGI was not limited: {body}"
        status, body = get(confined.port, "b.test", "/cgi-bin/fork.cgi")
        assert status == 200, body
        assert "forked=10 failed=0" in body, f"tenant B's CGI was limited by A's cgroup: {body}"
    finally:
        with open(limit, "w") as f:
            f.write("max")


def test_nice_value_applies_to_that_environments_workers_only(confined):
    a_worker = jailed_worker(confined)
    (b_worker,) = workers_of(confined, confined.ids["b"][0])
    assert os.getpriority(os.PRIO_PROCESS, a_worker) == 5
    assert os.getpriority(os.PRIO_PROCESS, b_worker) == os.getpriority(os.PRIO_PROCESS, confined.pid())


def test_a_worker_that_cannot_be_moved_into_its_cgroup_never_serves(module, accounts):
    """The cgroup disappears after configtest: the parent logs, the worker never starts, and
    the vhost answers 503 rather than being served outside its cgroup."""
    port = free_port()
    cgroup = make_cgroup(f"{CGROUP_V1_PIDS}/peruser-test-gone-{uuid.uuid4().hex[:8]}")
    apache = Apache("")
    site = make_site(apache.root, *accounts["peruser-a"], "a")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MinMultiplexers 1
MinSpareProcessors 0
ProcessorWaitTimeout 1
<Directory {apache.root}>
    Require all granted
    Options +ExecCGI
</Directory>
<Processor env-gone>
    User peruser-a
    Group peruser-a
    Cgroup {cgroup}
    MinProcessors 0
</Processor>
{site_vhost(port, "gone.test", site, "env-gone")}
""")
    try:
        apache.start(ports=(port,))
        os.rmdir(cgroup)
        status, body = get(port, "gone.test", "/cgi-bin/id.cgi")
        assert status == 503, body
        log = apache.read_error_log()
        assert re.search(rf"cannot move a new worker of environment env-gone \(pid \d+\) into cgroup "
                         rf"{re.escape(cgroup)}; the worker is not started", log), log
        assert f"uid={accounts['peruser-a'][0]}" not in body
        assert not [pid for pid, uid, _ in apache.children() if uid == accounts["peruser-a"][0]]
        assert re.search(r"environment env-gone has no worker and cannot start one", log), log
        # The cgroup comes back: a later start (after the restart backoff) serves again.
        make_cgroup(cgroup)
        deadline = time.time() + 30
        while time.time() < deadline:
            status, body = get(port, "gone.test", "/cgi-bin/id.cgi")
            if status == 200:
                break
        assert status == 200 and f"uid={accounts['peruser-a'][0]}" in body, body
        (worker,) = [pid for pid, uid, _ in apache.children() if uid == accounts["peruser-a"][0]]
        with open(f"/proc/{worker}/cgroup") as f:
            assert os.path.basename(cgroup) in f.read()
        deadline = time.time() + 5   # noted at the parent's next maintenance round
        while "environment env-gone has a worker again" not in apache.read_error_log():
            assert time.time() < deadline, apache.read_error_log()
            time.sleep(0.1)
    finally:
        apache.stop()
        apache.cleanup()
        remove_cgroup(cgroup)


def test_a_worker_killed_in_service_is_not_a_failed_start(confined):
    """Only a worker that dies before it is ever ready marks its environment as unable to start."""
    (b_worker,) = workers_of(confined, confined.ids["b"][0])
    os.kill(b_worker, 9)
    deadline = time.time() + 10
    while time.time() < deadline and workers_of(confined, confined.ids["b"][0]) in ([], [b_worker]):
        time.sleep(0.1)
    status, body = get(confined.port, "b.test", "/cgi-bin/id.cgi")
    assert status == 200 and f"uid={confined.ids['b'][0]}" in body
    assert "cannot start one" not in confined.read_error_log()
