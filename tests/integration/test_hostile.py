"""A hostile tenant: a CGI running as tenant A tries to reach tenant B, the multiplexers, the
parent and the shared state, and must fail at every attempt. Each attempt is its own test; the
CGI reports what it tried and what the kernel said (run with -s to see the whole table)."""
import http.client
import json
import os
import shutil
import urllib.parse
import uuid

import pytest

from conftest import make_site, site_vhost, two_environments
from harness import Apache, free_port, read_maps

ATTACK_CGI = r'''#!/usr/bin/python3
# Runs as tenant A. Every attempt records "blocked" (with the error) or "SUCCEEDED".
import ctypes, errno, json, os, socket, stat, subprocess, sys, urllib.parse

q = {k: v[0] for k, v in urllib.parse.parse_qs(os.environ.get("QUERY_STRING", "")).items()}
b_worker, mux, parent = int(q["b_worker"]), int(q["mux"]), int(q["parent"])
own_worker = os.getppid()
libc = ctypes.CDLL(None, use_errno=True)
results = {}

def attempt(name, what, action):
    try:
        detail = action()
    except OSError as e:
        results[name] = {"tried": what, "result": "blocked", "detail": f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"}
        return
    if isinstance(detail, str) and detail.startswith("blocked"):
        results[name] = {"tried": what, "result": "blocked", "detail": detail}
    else:
        results[name] = {"tried": what, "result": "SUCCEEDED", "detail": str(detail)}

def read(path):
    with open(path, "rb") as f:
        return f.read(64)

def ptrace_attach(pid):
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    libc.ptrace(PTRACE_DETACH, pid, None, None)
    return f"attached to {pid}"

def pidfd_getfd(pid):
    SYS_pidfd_open, SYS_pidfd_getfd = 434, 438
    pidfd = libc.syscall(SYS_pidfd_open, pid, 0)
    if pidfd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    got = []
    for target in range(64):
        fd = libc.syscall(SYS_pidfd_getfd, pidfd, target, 0)
        if fd >= 0:
            got.append(target)
        elif ctypes.get_errno() not in (errno.EBADF,):
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return f"copied fds {got}" if got else "blocked: no fd to copy"

def own_sockets():
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        found.append(f"fd {fd}: family {s.family.name} type {s.type.name} listening={bool(listening)}")
        s.close()
    bad = [f for f in found if "listening=True" in f or "AF_UNIX" in f]
    return f"sockets {bad}" if bad else f"blocked: no listening or Unix socket among its fds ({found or 'no sockets'})"

def own_shared_memory():
    links = []
    for name in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    mem = [l for l in links if "memfd:" in l or "/dev/shm" in l]
    shm = [n for n in os.listdir("/dev/shm") if "peruser" in n] if os.path.isdir("/dev/shm") else []
    return f"found {mem + shm}" if mem or shm else f"blocked: no memfd or /dev/shm segment in reach ({links})"

def named_channel():
    names = []
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and ("peruser" in parts[7] or q["root"] in parts[7]):
                names.append(parts[7])
    for path in names:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path.replace("@", "\0", 1) if path.startswith("@") else path)
        return f"connected to {path}"
    return "blocked: the hand-off channels are unnamed socketpairs; no name to connect to"

def suid_binary():
    out = subprocess.run([q["suid"], "-u"], capture_output=True, text=True).stdout.strip()
    return f"euid {out}" if out == "0" else f"blocked: setuid-root binary ran with euid {out} (no_new_privs)"

attempt("read_b_0600", f"read tenant B's mode 0600 file {q['b_0600']}", lambda: read(q["b_0600"]))
attempt("read_b_0640", f"read tenant B's mode 0640 group-{q['b_group']} file {q['b_0640']}", lambda: read(q["b_0640"]))
attempt("kill_b_worker", f"SIGTERM tenant B's worker {b_worker}", lambda: os.kill(b_worker, signal_term := 15))
attempt("kill_multiplexer", f"SIGTERM the multiplexer {mux}", lambda: os.kill(mux, 15))
attempt("kill_parent", f"SIGTERM the root parent {parent}", lambda: os.kill(parent, 15))
attempt("ptrace_b_worker", f"PTRACE_ATTACH tenant B's worker {b_worker}", lambda: ptrace_attach(b_worker))
attempt("ptrace_multiplexer", f"PTRACE_ATTACH the multiplexer {mux}", lambda: ptrace_attach(mux))
attempt("ptrace_own_worker", f"PTRACE_ATTACH its own worker {own_worker} (which holds the channel and the table)",
        lambda: ptrace_attach(own_worker))
attempt("environ_b_worker", f"read /proc/{b_worker}/environ", lambda: read(f"/proc/{b_worker}/environ"))
attempt("mem_b_worker", f"read /proc/{b_worker}/mem", lambda: read(f"/proc/{b_worker}/mem"))
attempt("fds_b_worker", f"list /proc/{b_worker}/fd (B's channel)", lambda: os.listdir(f"/proc/{b_worker}/fd"))
attempt("pidfd_getfd_b_worker", f"pidfd_getfd every fd of B's worker {b_worker}", lambda: pidfd_getfd(b_worker))
attempt("pidfd_getfd_multiplexer", f"pidfd_getfd every fd of the multiplexer {mux} (listeners, channels)",
        lambda: pidfd_getfd(mux))
attempt("named_channel", "find and connect to a named hand-off channel", named_channel)
attempt("own_sockets", "find a listening socket or a channel among its own fds", own_sockets)
attempt("setuid_root", "setuid(0)", lambda: os.setuid(0))
attempt("setgid_root", "setgid(0)", lambda: os.setgid(0))
attempt("setgroups_root", "setgroups([0])", lambda: os.setgroups([0]))
attempt("setresuid_root", "setresuid(-1, 0, -1)", lambda: os.setresuid(-1, 0, -1))
attempt("suid_binary", f"exec a setuid-root binary {q['suid']}", suid_binary)
attempt("table_via_own_fds", "find the shared child table among its fds or in /dev/shm", own_shared_memory)
attempt("table_via_worker_mem", f"open /proc/{own_worker}/mem of its own worker for writing",
        lambda: open(f"/proc/{own_worker}/mem", "r+b").close())
attempt("table_via_worker_map_files", f"list /proc/{own_worker}/map_files (the table's mapping)",
        lambda: os.listdir(f"/proc/{own_worker}/map_files"))

sys.stdout.write("Content-Type: application/json\r\n\r\n" + json.dumps(results))
'''

ATTEMPTS = ["read_b_0600", "read_b_0640", "kill_b_worker", "kill_multiplexer", "kill_parent",
            "ptrace_b_worker", "ptrace_multiplexer", "ptrace_own_worker", "environ_b_worker",
            "mem_b_worker", "fds_b_worker", "pidfd_getfd_b_worker", "pidfd_getfd_multiplexer",
            "named_channel", "own_sockets", "setuid_root", "setgid_root", "setgroups_root",
            "setresuid_root", "suid_binary", "table_via_own_fds", "table_via_worker_mem",
            "table_via_worker_map_files"]


def get(port, host, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    conn.close()
    return resp.status, body


@pytest.fixture(scope="module")
def attack(module, accounts):
    port = free_port()
    a_ids, b_ids = accounts["peruser-a"], accounts["peruser-b"]
    apache = Apache("")
    a_site = make_site(apache.root, *a_ids, "a")
    b_site = make_site(apache.root, *b_ids, "b")
    b_0640 = os.path.join(b_site, "group-secret.txt")
    with open(b_0640, "w") as f:
        f.write("for B's group only\n")
    os.chown(b_0640, *b_ids)
    os.chmod(b_0640, 0o640)
    cgi = os.path.join(a_site, "cgi-bin", "attack.cgi")
    with open(cgi, "w") as f:
        f.write(ATTACK_CGI)
    os.chown(cgi, *a_ids)
    os.chmod(cgi, 0o755)
    # A setuid-root program in a root-owned place (not /tmp, which may be nosuid).
    suid_dir = os.path.join("/srv/peruser-tests", f"suid-{uuid.uuid4().hex[:8]}")
    os.makedirs(suid_dir, mode=0o755)
    os.chmod(os.path.dirname(suid_dir), 0o755)
    suid = os.path.join(suid_dir, "id")
    shutil.copy("/usr/bin/id", suid)
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MinMultiplexers 1
MaxMultiplexers 1
MinSpareProcessors 0
{two_environments(apache.root)}
{site_vhost(port, "a.test", a_site, "env-a")}
{site_vhost(port, "b.test", b_site, "env-b")}
""")
    apache.start(ports=(port,))
    kids = apache.wait_children(3)
    (b_worker,) = [pid for pid, uid, _ in kids if uid == b_ids[0]]
    (mux,) = [pid for pid, uid, _ in kids if uid == 33]
    query = urllib.parse.urlencode({
        "b_worker": b_worker, "mux": mux, "parent": apache.pid(), "root": apache.root, "suid": suid,
        "b_0600": os.path.join(b_site, "secret.txt"), "b_0640": b_0640, "b_group": "peruser-b"})
    status, body = get(port, "a.test", f"/cgi-bin/attack.cgi?{query}")
    assert status == 200, body
    results = json.loads(body)
    print("\nWhat tenant A's CGI tried:")
    for name in ATTEMPTS:
        r = results.get(name, {"tried": name, "result": "NOT RUN", "detail": ""})
        print(f"  {r['result']:>9}  {r['tried']}  [{r['detail']}]")
    yield {"results": results, "apache": apache, "port": port, "b_worker": b_worker, "mux": mux}
    apache.stop()
    apache.cleanup()
    shutil.rmtree(suid_dir, ignore_errors=True)


@pytest.mark.parametrize("name", ATTEMPTS)
def test_tenant_a_cannot(attack, name):
    result = attack["results"].get(name)
    assert result is not None, f"{name} was not attempted"
    assert result["result"] == "blocked", f"{result['tried']}: {result['detail']}"


def test_the_server_is_unharmed_after_the_attack(attack):
    apache = attack["apache"]
    for pid in (attack["b_worker"], attack["mux"], apache.pid()):
        os.kill(pid, 0)   # still alive
    status, body = get(attack["port"], "b.test", "/cgi-bin/id.cgi")
    assert status == 200 and "uid=" in body
    assert "peruser: " not in "".join(l for l in apache.read_error_log().splitlines(True)
                                       if "[mpm_peruser:error]" in l or "[mpm_peruser:crit]" in l)


def table_mappings(pid):
    """(size in bytes, VmFlags) of each mapping of the shared child table in process `pid`."""
    out, current = [], None
    for line in read_maps(pid, "smaps").splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            current = (end - start) if "peruser-child-table" in line else None
        elif line.startswith("VmFlags:") and current is not None:
            out.append((current, set(fields[1:])))
    return out


def test_a_compromised_worker_can_write_only_its_own_pages_of_the_child_table(attack):
    """Beyond what a CGI can reach: code running inside a worker (mod_php, say) holds the table
    mapped. Only its own page, its own detail page and its environment's page may ever be
    writable ("mw"); the rest comes from a read-only descriptor, so not even mprotect can make it
    writable."""
    maps = table_mappings(attack["b_worker"])
    writable = [size for size, flags in maps if "mw" in flags]
    assert sorted(writable) == [4096, 4096, 4096], maps
    assert all("wr" not in flags for size, flags in maps if "mw" not in flags), maps
    assert sum(size for size, _ in maps) >= 3 * 4096
    assert "peruser-multiplexer-state" not in read_maps(attack["b_worker"]), "workers unmap the multiplexers' state"
    # The multiplexer keeps the whole table writable: it runs no tenant code.
    assert any("mw" in flags and size > 4096 for size, flags in table_mappings(attack["mux"]))
