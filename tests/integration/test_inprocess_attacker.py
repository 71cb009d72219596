"""The in-process attacker: code running as tenant A *inside* A's worker process (a PHP exploit,
mod_perl), holding every descriptor and mapping that worker holds, attacks the tenant boundary.

A CGI cannot play this part (it starts clean after exec, see test_hostile.py), so the attacker is
a test-only Apache module, tests/integration/attacker/mod_peruser_attack.c, compiled here with
`apxs -c` into each test server's temporary ServerRoot (never installed) and enabled with
`SetHandler peruser-attack` in tenant A's vhost only. ?attack=NAME picks the attack; the module
reports, one JSON object per line, what it did and what the kernel answered.

Each attack gets a fresh server (some attacks damage state that lives as long as the server,
such as the shared hand-back socket). After the attack, whatever the attack reports:
- the root parent is alive;
- tenant B's CGI answers 200 as B's uid, 50 times in a row (p99 printed);
- a.test answers again (as A's uid) within a few seconds: the attacked worker may be restarted;
- no multiplexer (a child running as www-data) uses more than 20% CPU over 2 s;
- one HTTP/1.1 connection with requests to b.test, a.test, b.test gets three 200s with the
  right uids (the hand-back channels work), and so does one with b.test, b2.test, b.test (b2.test
  is a second environment of tenant B: no environment of A is involved);
- every child of the parent runs as www-data, A or B;
- the error log grew by at most LOG_FLOOD_LIMIT lines.
Attacks: table, sockets (every socket of the worker), sockets-handback / sockets-channel (only the
hand-back socket(s), or only env-a's own channel: which of them breaks what), forge,
forge-empty (zero-length messages, which read like a peer's EOF), signal. On its own: cells (its
environment's lend cells, where its workers give lent connections back) and keepalives (a hand-back of its own connection that lies
about the kept-alive answers so far).
Run with -s to see the reports, timings and the new error-log lines of every attack.
PERUSER_TEST_MPM=/path/to/mod_mpm_peruser.so tests another build than build/.

`keepfd`/`readkept` is a measurement: a worker that hands a kept-alive connection back to the
multiplexers can keep a duplicate of its descriptor. The test prints what tenant A can still
see of later traffic on that connection (another tenant's request) instead of asserting that
it is blocked; with a directive that turns hand-back off (`PeruserHandBack off`, skipped while
configtest does not know it) it asserts that nothing is visible.
"""
import json
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import make_site, two_environments
from harness import MODULE, Apache, alive, cpu_ticks, free_port, session_pids
from test_end_to_end import unix_inodes

HERE = os.path.dirname(os.path.abspath(__file__))
# The MPM under test (default: build/mod_mpm_peruser.so); PERUSER_TEST_MPM=path tests another
# build, e.g. one made from a clean checkout while build/ is being rebuilt.
MPM_UNDER_TEST = os.environ.get("PERUSER_TEST_MPM", MODULE)
ATTACK_SOURCE = os.path.join(HERE, "attacker", "mod_peruser_attack.c")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MUX_CPU_LIMIT = 20.0        # percent of one CPU over the window
MUX_CPU_WINDOW = 2.0        # seconds
B_REQUESTS = 50
A_RECOVERY_SECONDS = 10
LOG_FLOOD_LIMIT = 10000     # new error-log lines during one attack and the checks after it
SECRET = "Basic dGVuYW50LWI6aHVudGVyMg=="   # tenant-b:hunter2, in a later request to b.test


# --------------------------------------------------------------------------------------------
# A small HTTP/1.1 client on one raw socket (http.client would silently reconnect, and its
# buffered reader makes pipelining ambiguous).

class Conn:
    def __init__(self, port, timeout=15):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.received = b""   # every byte ever received, for salvaging a broken report
        self.local = self.sock.getsockname()

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def send_request(self, host, path, close=False, extra=""):
        connection = "Connection: close\r\n" if close else ""
        self.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{connection}{extra}\r\n".encode())

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by the server")
        self.buf += chunk
        self.received += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        out, self.buf = self.buf.split(b"\r\n", 1)
        return out

    def read_response(self):
        """(status, headers, body); raises EOFError/OSError (or ValueError on garbage)."""
        if True:
            while b"\r\n\r\n" not in self.buf:
                self._fill()
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for h in lines[1:]:
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                body = self._take(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self._line().split(b";")[0], 16)
                    if size == 0:
                        self._line()
                        break
                    parts.append(self._take(size))
                    self._line()
                body = b"".join(parts)
            else:
                try:
                    while True:
                        self._fill()
                except EOFError:
                    pass
                body, self.buf = self.buf, b""
            return status, headers, body.decode(errors="replace")

    def request(self, host, path, close=False, extra=""):
        self.send_request(host, path, close, extra)
        return self.read_response()


def get(port, host, path, timeout=15):
    c = Conn(port, timeout)
    try:
        return c.request(host, path, close=True)
    finally:
        c.close()


def uid_in(body):
    m = re.search(r"\buid=(\d+)", body)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------
# The server

def build_attack_module(root):
    """apxs -c into the server's ServerRoot; returns the path of the .so (never installed)."""
    build = os.path.join(root, "attacker-build")
    os.makedirs(build)
    shutil.copy(ATTACK_SOURCE, build)
    result = subprocess.run(["apxs", "-c", "-Wc,-Wall", "-o", "mod_peruser_attack.la",
                             "mod_peruser_attack.c"], cwd=build, capture_output=True, text=True)
    assert result.returncode == 0, f"apxs -c failed:\n{result.stdout}{result.stderr}"
    so = os.path.join(root, "modules", "mod_peruser_attack.so")
    os.makedirs(os.path.dirname(so), exist_ok=True)
    shutil.copy(os.path.join(build, ".libs", "mod_peruser_attack.so"), so)
    os.chmod(so, 0o644)
    return so


class Server:
    def __init__(self, accounts, extra="", multiplexers=2):
        self.multiplexers = multiplexers
        self.port = free_port()
        self.apache = Apache("", name="inproc")
        root = self.apache.root
        self.a_uid, self.a_gid = accounts["peruser-a"]
        self.b_uid, self.b_gid = accounts["peruser-b"]
        self.www_uid = pwd.getpwnam("www-data").pw_uid
        a_site = make_site(root, self.a_uid, self.a_gid, "a")
        b_site = make_site(root, self.b_uid, self.b_gid, "b")
        so = build_attack_module(root)
        # The MPM is copied: build/ may be rebuilt (in place) while this server runs.
        self.mpm = os.path.join(root, "modules", "mod_mpm_peruser.so")
        shutil.copy(MPM_UNDER_TEST, self.mpm)
        self.apache.write_config(module=self.mpm, body=f"""
Listen 127.0.0.1:{self.port}
MinMultiplexers {multiplexers}
MaxMultiplexers {multiplexers}
MinSpareProcessors 0
LoadModule peruser_attack_module {so}
{extra}
{two_environments(root)}
<VirtualHost 127.0.0.1:{self.port}>
    ServerName a.test
    DocumentRoot {a_site}
    ScriptAlias /cgi-bin/ {a_site}/cgi-bin/
    ServerEnvironment env-a
    <Location /attack>
        SetHandler peruser-attack
    </Location>
</VirtualHost>
<VirtualHost 127.0.0.1:{self.port}>
    ServerName b.test
    DocumentRoot {b_site}
    ScriptAlias /cgi-bin/ {b_site}/cgi-bin/
    ServerEnvironment env-b
</VirtualHost>
# A second environment of tenant B: hand-backs between b.test and b2.test involve no
# environment of tenant A, so they show whether A's attack reached beyond A.
<Processor env-b2>
    User peruser-b
    Group peruser-b
    MinProcessors 1
</Processor>
<VirtualHost 127.0.0.1:{self.port}>
    ServerName b2.test
    DocumentRoot {b_site}
    ScriptAlias /cgi-bin/ {b_site}/cgi-bin/
    ServerEnvironment env-b2
</VirtualHost>
""")
        self.parent = None
        self.sid = None

    def start(self):
        st = os.stat(MPM_UNDER_TEST)
        print(f"\n[MPM under test: {MPM_UNDER_TEST}, {st.st_size} bytes, "
              f"modified {time.strftime('%H:%M:%S', time.localtime(st.st_mtime))}]")
        self.apache.start(ports=(self.port,))
        self.parent = self.apache.pid()
        self.sid = os.getsid(self.parent)
        self.apache.wait_children(self.multiplexers + 3)   # 1 worker each of env-a, env-b, env-b2

    def stop(self):
        try:
            self.apache.stop()
        finally:
            # If the parent died, its children get SIGTERM (PR_SET_PDEATHSIG); anything of this
            # server's session still there after that is stopped by pid, never by name.
            if self.sid:
                deadline = time.time() + 5
                while time.time() < deadline and session_pids(self.sid):
                    time.sleep(0.1)
                for pid in session_pids(self.sid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.apache.cleanup()

    def log_offset(self):
        return len(self.apache.read_error_log())

    def new_log(self, offset):
        return self.apache.read_error_log()[offset:]


@pytest.fixture
def server(module, accounts):
    srv = Server(accounts)
    try:  # a server that failed to start completely is stopped too
        srv.start()
        yield srv
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------
# Running an attack and judging the server afterwards

def run_attack(srv, attack, timeout=40):
    """Sends ?attack=NAME to a.test; returns (report lines, error or None)."""
    c = Conn(srv.port, timeout)
    started = time.monotonic()
    try:
        status, _, body = c.request("a.test", f"/attack?attack={attack}", close=True)
        raw, error = body, (None if status == 200 else f"HTTP {status}")
    except (EOFError, OSError, ValueError) as e:
        # Salvage the JSON lines from whatever arrived (chunk-size lines are not JSON).
        raw, error = c.received.decode(errors="replace"), f"{type(e).__name__}: {e}"
    finally:
        c.close()
    lines = []
    for text in raw.splitlines():
        text = text.strip()
        if text.startswith("{"):
            try:
                lines.append(json.loads(text))
            except ValueError:
                pass
    if not any(l.get("done") for l in lines) and error is None:
        error = "the report has no final line"
    print(f"\n=== attack {attack}: {time.monotonic() - started:.2f} s"
          + (f", request ended with {error}" if error else ""))
    for l in lines:
        if "step" in l:
            flag = "ok " if l["ok"] else "no "
            extra = {k: v for k, v in l.items() if k not in ("step", "ok", "errno", "detail")}
            print(f"  {flag} {l['step']}  [{l.get('errno') or ''}] {l.get('detail', '')}"
                  + (f" {extra}" if extra else ""))
        elif "done" not in l:
            print(f"  {l}")
    return lines, error


def multiplexer_cpu(srv):
    """Percent of one CPU each multiplexer used over MUX_CPU_WINDOW seconds."""
    muxes = [pid for pid, uid, _ in srv.apache.children() if uid == srv.www_uid]
    before = {}
    for pid in muxes:
        try:
            before[pid] = cpu_ticks(pid)
        except OSError:
            pass
    time.sleep(MUX_CPU_WINDOW)
    out = {}
    for pid, t0 in before.items():
        try:
            out[pid] = 100.0 * (cpu_ticks(pid) - t0) / CLK_TCK / MUX_CPU_WINDOW
        except OSError:
            pass
    return out


def b_sequential(srv, failures):
    latencies, bad = [], []
    consecutive = 0
    for i in range(B_REQUESTS):
        t0 = time.monotonic()
        try:
            status, _, body = get(srv.port, "b.test", f"/cgi-bin/id.cgi?n={i}", timeout=5)
        except (EOFError, OSError) as e:
            status, body = None, f"{type(e).__name__}: {e}"
        latencies.append(time.monotonic() - t0)
        if status != 200 or uid_in(body) != srv.b_uid:
            bad.append(f"#{i}: {status} {body.strip()[:120]!r}")
            consecutive += 1
            if consecutive >= 3:
                break
        else:
            consecutive = 0
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]
    print(f"  b.test CGI x{len(latencies)} sequential: p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms, failed {len(bad)}")
    if bad:
        failures.append(f"tenant B's CGI did not answer 200 as uid {srv.b_uid} "
                        f"({len(bad)} of {len(latencies)} failed, stopped after 3 in a row): {bad[:3]}")
    return p99


def a_recovers(srv, failures):
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < A_RECOVERY_SECONDS:
        try:
            status, _, body = get(srv.port, "a.test", "/cgi-bin/id.cgi", timeout=3)
            if status == 200 and uid_in(body) == srv.a_uid:
                print(f"  a.test answered as A after {time.monotonic() - t0:.2f} s")
                return
            last = f"{status} {body.strip()[:120]!r}"
        except (EOFError, OSError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    failures.append(f"a.test did not answer 200 as uid {srv.a_uid} within {A_RECOVERY_SECONDS} s "
                    f"(last: {last})")


def cross_environment_keepalive(srv, failures, hosts=("b.test", "a.test", "b.test")):
    """Requests to `hosts` on one HTTP/1.1 connection (the default: b.test, a.test, b.test):
    each change of environment needs the hand-back channel."""
    uids = {"a.test": srv.a_uid, "b.test": srv.b_uid, "b2.test": srv.b_uid}
    name = "/".join(h.split(".")[0] for h in hosts)
    try:
        c = Conn(srv.port, 10)
    except OSError as e:
        failures.append(f"keep-alive {name}: cannot connect: {e}")
        return
    got = []
    try:
        for host in hosts:
            uid = uids[host]
            try:
                status, headers, body = c.request(host, "/cgi-bin/id.cgi")
            except (EOFError, OSError) as e:
                got.append(f"{host}: {type(e).__name__}: {e}")
                failures.append(f"keep-alive {name} on one connection broke at {host}: {got}")
                return
            got.append(f"{host}: {status} uid={uid_in(body)}")
            if status != 200 or uid_in(body) != uid:
                failures.append(f"keep-alive {name} on one connection: {host} answered {status} "
                                f"uid={uid_in(body)} (want 200 uid={uid}): {got} {body.strip()[:160]!r}")
                return
    finally:
        c.close()
    print(f"  keep-alive {name} on one connection: {got}")


def children_uids_ok(srv, failures):
    """Every child runs as www-data, A or B. A child the parent has just forked is still root
    for a moment (before its privilege drop), so only a pid seen with another uid in three
    samples 0.5 s apart counts."""
    allowed = {srv.www_uid, srv.a_uid, srv.b_uid}
    wrong = None
    for _ in range(3):
        now = {(pid, uid) for pid, uid, _ in srv.apache.children() if uid not in allowed}
        wrong = now if wrong is None else wrong & now
        if not wrong:
            return
        time.sleep(0.5)
    failures.append(f"children running as an unexpected uid for over a second: {sorted(wrong)}")


def summarize_log(text, limit=14):
    """New error-log lines, deduplicated (timestamps and numbers folded), most frequent first."""
    counts = {}
    for line in text.splitlines():
        key = re.sub(r"^\[[^\]]*\] ", "", line)
        key = re.sub(r"\[pid \d+(:tid \d+)?\] ", "", key)
        key = re.sub(r"\d+", "N", key)[:220]
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    print(f"  error log: {sum(counts.values())} new lines, {len(counts)} distinct")
    for key, n in ordered[:limit]:
        print(f"    {n:6d} x {key}")
    return ordered


def judge(srv, failures, keepalive=True):
    """The checks that hold after every attack (`keepalive`: the cross-environment keep-alive
    checks, which need hand-back)."""
    if not alive(srv.parent):
        failures.append(f"the root parent (pid {srv.parent}) is gone")
        return
    cpu = multiplexer_cpu(srv)
    print("  multiplexer CPU over %.0f s: %s" % (MUX_CPU_WINDOW,
                                                ", ".join(f"pid {p}: {v:.0f}%" for p, v in cpu.items())))
    spinning = {p: round(v) for p, v in cpu.items() if v > MUX_CPU_LIMIT}
    if spinning:
        failures.append(f"multiplexer(s) spinning after the attack: {spinning} (% of a CPU over "
                        f"{MUX_CPU_WINDOW:.0f} s, limit {MUX_CPU_LIMIT:.0f}%)")
    if not cpu:
        failures.append("no multiplexer is running")
    b_sequential(srv, failures)
    a_recovers(srv, failures)
    if keepalive:
        cross_environment_keepalive(srv, failures)
        cross_environment_keepalive(srv, failures, ("b.test", "b2.test", "b.test"))
    children_uids_ok(srv, failures)
    if not alive(srv.parent):
        failures.append(f"the root parent (pid {srv.parent}) died during the checks")


def header_of(lines):
    return next((l for l in lines if "attack" in l), None)


def steps(lines, prefix):
    return [l for l in lines if "step" in l and l["step"].startswith(prefix)]


def attack_and_judge(srv, name, query, specific=None):
    failures = []
    # Sanity before the attack: the same checks pass on an unharmed server.
    pre = []
    cross_environment_keepalive(srv, pre)
    cross_environment_keepalive(srv, pre, ("b.test", "b2.test", "b.test"))
    assert not pre, f"the server was not healthy before the attack: {pre}"
    offset = srv.log_offset()
    lines, error = run_attack(srv, query)
    head = header_of(lines)
    if head is None:
        failures.append(f"the attack request produced no report ({error})")
    elif head["uid"] != srv.a_uid or head["euid"] != srv.a_uid:
        failures.append(f"the attack ran as uid {head['uid']}/{head['euid']}, not tenant A's {srv.a_uid}")
    if error and head is not None:
        # A worker that lies about itself in its own page may have itself stopped (a busy
        # status since the dawn of time reads as over ExpireTimeout): the worst such a lie
        # may cause, and only to the liar. Anything else killing it mid-report is a finding.
        own_expiry = re.search(r"stopping worker of env-a \(pid \d+, slot \d+\): on one request longer than "
                               r"ExpireTimeout", srv.new_log(offset))
        if not own_expiry:
            failures.append(f"the attack request did not complete ({error}): the worker died mid-report")
    if specific:
        specific(srv, lines, failures)
    time.sleep(0.3)
    judge(srv, failures)
    new_log = srv.new_log(offset)
    summarize_log(new_log)
    flood = new_log.count("\n")
    if flood > LOG_FLOOD_LIMIT:
        failures.append(f"the error log grew by {flood} lines ({len(new_log) / 1e6:.1f} MB) during the attack "
                        f"and the checks: a tenant can flood it (limit {LOG_FLOOD_LIMIT} lines)")
    if failures and KNOWN.get(name):
        failures.append(f"(known on the code this test was written against: {KNOWN[name]})")
    return lines, failures


# --------------------------------------------------------------------------------------------
# The attacks

def check_table(srv, lines, failures):
    maps = [l for l in lines if "mapping" in l]
    if not maps:
        failures.append("the worker has no child table mapping (cannot judge)")
    writable = [m for m in maps if "w" in m["perms"]]
    # Its own page, its own detail page (request, vhost, client, ticket) and its environment's page.
    if sorted(m["size"] for m in writable) != [4096, 4096, 4096]:
        failures.append(f"writable table ranges are not exactly three 4 KiB pages: {writable}")
    if any("multiplexer-state" in m["mapping"] for m in maps):
        failures.append("the worker maps the multiplexers' state")
    for prefix in ("open /proc/self/fd/", "mprotect", "pwrite /proc/self/mem", "process_vm_writev",
                   "madvise MADV_REMOVE", "open /proc/self/map_files"):
        for s in steps(lines, prefix):
            if s["ok"]:
                failures.append(f"BREACH: {s['step']}: {s['detail']}")
    ro = [m for m in maps if "w" not in m["perms"]]
    if ro and not steps(lines, "mprotect"):
        failures.append("the read-only pages were not attacked (report incomplete)")


def check_sockets(srv, lines, failures):
    found = steps(lines, "SO_SNDBUF")
    if not found:
        failures.append("no socket was attacked (cannot judge)")
    for s in found:
        if "listening=1" in s["step"] or "domain=AF_INET" in s["step"]:
            failures.append(f"the worker holds a listener or another TCP socket: {s['step']}")


def check_forge(srv, lines, failures):
    if not steps(lines, "forge on"):
        failures.append("the worker found no Unix socket to forge on (cannot judge)")


def check_forge_empty(srv, lines, failures):
    if not steps(lines, "20 empty messages"):
        failures.append("the worker found no Unix socket to send on (cannot judge)")


def check_signal(srv, lines, failures):
    kills = [l for l in lines if "target_pid" in l]
    if not kills:
        failures.append("no kill was attempted")
    for k in kills:
        if k["ok"] and k["target_uid"] != srv.a_uid:
            failures.append(f"BREACH: {k['step']} (uid {k['target_uid']}) was delivered")
    parent = [k for k in kills if "getppid" in k["step"]]
    if not parent or parent[0]["ok"] or parent[0]["target_pid"] != srv.parent:
        failures.append(f"SIGKILL to the parent was not refused: {parent}")


def worker_socket_fds(srv):
    """The Unix sockets of tenant A's (idle) worker by role: "channel", env-a's own channel, is
    the one the worker waits on (from /proc/PID/syscall: in recvmsg, or in epoll_wait on an
    epoll that watches it, from the epoll's fdinfo); "handback" is every other one (one
    socketpair shared by all environments, or a per-environment one, depending on the build).
    Returns comma-separated fd lists for the module's &fd=."""
    recvmsg, epoll_waits = 47, {232, 281, 441}   # x86_64: recvmsg; epoll_wait, epoll_pwait(2)
    kids = srv.apache.children()
    a_pid = next(pid for pid, uid, _ in kids if uid == srv.a_uid)
    # Unix sockets only: the worker may still keep a TCP connection it served (its lingering close).
    unix_sockets = {f"socket:[{inode}]" for inode in unix_inodes()}
    unix = []
    for name in os.listdir(f"/proc/{a_pid}/fd"):
        try:
            if os.readlink(f"/proc/{a_pid}/fd/{name}") in unix_sockets:
                unix.append(int(name))
        except OSError:
            pass
    channel = None
    for _ in range(50):
        with open(f"/proc/{a_pid}/syscall") as f:
            fields = f.read().split()
        if fields and fields[0] == str(recvmsg):
            channel = int(fields[1], 16)
            break
        if fields and fields[0].isdigit() and int(fields[0]) in epoll_waits:
            with open(f"/proc/{a_pid}/fdinfo/{int(fields[1], 16)}") as f:
                watched = [int(line.split()[1]) for line in f if line.startswith("tfd:")]
            if len(watched) == 1:
                channel = watched[0]
                break
        time.sleep(0.05)
    assert channel in unix, f"tenant A's worker {a_pid} is not waiting (recvmsg, or its epoll) on one of {unix}"
    others = [fd for fd in sorted(unix) if fd != channel]
    assert others, f"tenant A's worker {a_pid} holds no socket but its channel: {unix}"
    return {"channel": str(channel), "handback": ",".join(map(str, others))}


# name: (the module's attack, which of A's sockets (None: all), the attack-specific check)
ATTACKS = {
    "table": ("table", None, check_table),
    "sockets": ("sockets", None, check_sockets),
    "sockets-handback": ("sockets", "handback", check_sockets),
    "sockets-channel": ("sockets", "channel", check_sockets),
    "forge": ("forge", None, check_forge),
    "forge-empty": ("empty", None, check_forge_empty),
    "signal": ("signal", None, check_signal),
}

# What each attack showed when this test was written (HEAD 76ea949, and a work-in-progress build
# with per-environment hand-back channels), added to a failure's message so that a red test says
# whether it is the known finding or something new.
KNOWN = {
    "sockets": "see sockets-handback and sockets-channel",
    "sockets-handback": "at 76ea949 one hand-back socketpair serves every environment: shutdown() of a "
                        "worker's end makes every environment's hand-back fail (503, b.test->b2.test too) "
                        "and the multiplexers spin at 50-100% CPU on the EOF of their end; with "
                        "per-environment hand-back channels only env-a's hand-backs fail, for good "
                        "(a.test->b.test on one connection: 503)",
    "sockets-channel": "shutdown() of env-a's channel: env-a's workers exit, new ones inherit the same dead "
                       "socketpair from the parent, env-a answers 503 until a restart, and no log line says why",
    "forge": "at 76ea949 every forged hand-back is logged: ~440,000 error-log lines (65 MB) in 5 s",
    "forge-empty": "with per-environment hand-back channels (work in progress) a zero-length message is "
                   "taken for the sender's shutdown: the multiplexers stop reading env-a's hand-back "
                   "channel until a restart (a.test->b.test on one connection: 503); 76ea949 holds",
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_in_process_attack(server, name):
    attack, target, check = ATTACKS[name]
    query = attack
    if target:
        fd = worker_socket_fds(server)[target]
        print(f"\n[{target}: fd {fd} in tenant A's worker]")
        query += f"&fd={fd}"
    _, failures = attack_and_judge(server, name, query, check)
    assert not failures, f"attack {name!r} from inside tenant A's worker broke something:\n  " + \
        "\n  ".join(failures)


# --------------------------------------------------------------------------------------------
# A kept duplicate of a handed-back connection

def handback_directive_known(accounts):
    probe = Server(accounts, extra="PeruserHandBack off")
    try:
        result = probe.apache.configtest()
        return result.returncode == 0, (result.stdout + result.stderr).strip()
    finally:
        probe.apache.cleanup()


@pytest.mark.parametrize("handback", ["default", "off"])
def test_kept_descriptor_of_a_handed_back_connection(module, accounts, handback):
    extra = ""
    if handback == "off":
        # TODO: once hand-back can be switched off (directive name assumed: PeruserHandBack),
        # a kept descriptor must never see another tenant's request. Adjust the directive's
        # name and place here when it lands.
        known, output = handback_directive_known(accounts)
        if not known:
            pytest.skip(f"`PeruserHandBack off` is not accepted by configtest yet: {output[-200:]}")
        extra = "PeruserHandBack off"
    srv = Server(accounts, extra=extra)
    failures = []
    try:
        srv.start()
        offset = srv.log_offset()
        c = Conn(srv.port, 15)
        # 1. Tenant A's worker serves a request on this kept-alive connection and keeps a dup.
        lines, error = run_attack_on(c, "keepfd")
        head = header_of(lines)
        assert head and head["uid"] == srv.a_uid, f"keepfd did not run as tenant A: {lines} {error}"
        a_pid = head["pid"]
        # 2. The next request on the connection is for b.test: A's worker hands it back (or,
        #    with hand-back off, refuses it and closes the connection).
        try:
            status, headers, body = c.request("b.test", "/cgi-bin/id.cgi?first")
            moved = (status == 200 and uid_in(body) == srv.b_uid
                     and headers.get("connection", "").lower() != "close")
            print(f"  after keepfd, b.test on the same connection: {status} uid={uid_in(body)}"
                  f" connection: {headers.get('connection', '-')}")
        except (EOFError, OSError) as e:
            moved = False
            print(f"  after keepfd, b.test on the same connection: {type(e).__name__}: {e}")
        if handback == "default" and not moved:
            failures.append("b.test after a.test on one kept-alive connection was not served by B")
        # 3. B's worker is busy for 2 s with the next request; meanwhile the client sends
        #    another request to b.test, with credentials, that waits in the socket. A client
        #    whose connection was closed sends them on a new one (that A's worker never had).
        if moved:
            secret_conn = c
        else:
            c.close()
            secret_conn = Conn(srv.port, 15)
            print("  the secret goes on a new connection")
        secret_conn.send_request("b.test", "/cgi-bin/id.cgi?sleep=2")
        time.sleep(0.5)
        secret_conn.send_request("b.test", "/cgi-bin/id.cgi?after", extra=f"Authorization: {SECRET}\r\n")
        time.sleep(0.3)
        # 4. Tenant A's worker, on another connection, peeks at its kept descriptor.
        #    (That worker may still be busy, in a lingering close, or another worker of env-a
        #    may answer: try for a while.)
        seen = None
        for _ in range(8):
            lines, error = run_attack(srv, "readkept")
            head = header_of(lines)
            if head and head["pid"] == a_pid:
                seen = next((l for l in lines if "peeked" in l), None)
                break
            print(f"  readkept ran in worker {head and head['pid']}, not {a_pid}; again")
            time.sleep(0.2)
        # 5. Tenant B's two answers still arrive on the client's connection.
        for label in ("sleep=2", "after"):
            try:
                status, _, body = secret_conn.read_response()
                print(f"  b.test {label}: {status} uid={uid_in(body)}")
                if status != 200 or uid_in(body) != srv.b_uid:
                    failures.append(f"b.test {label} on the client's connection: {status} {body[:120]!r}")
            except (EOFError, OSError) as e:
                failures.append(f"b.test {label} on the client's connection: {type(e).__name__}: {e}")
                break
        secret_conn.close()
        peeked = (seen or {}).get("peeked", "")
        visible = SECRET in peeked
        print(f"\n  MEASURED (hand-back {handback}): tenant A's worker {a_pid} "
              + (f"SAW {len(peeked)} bytes of the client's later request to b.test, credentials "
                 f"included: {peeked[:200]!r}" if visible
                 else f"saw no later b.test bytes (peek: {seen})"))
        if handback == "off":
            if visible:
                failures.append(f"with hand-back off, tenant A still read tenant B's request: {peeked[:200]!r}")
        elif seen is None:
            print("  (the readkept request never reached the worker that kept the descriptor)")
        judge(srv, failures, keepalive=handback == "default")
        summarize_log(srv.new_log(offset))
    finally:
        srv.stop()
    assert not failures, "after a kept descriptor:\n  " + "\n  ".join(failures)


def run_attack_on(c, attack):
    """Like run_attack, on an existing kept-alive connection (no Connection: close)."""
    status, _, body = c.request("a.test", f"/attack?attack={attack}")
    lines = [json.loads(t) for t in body.splitlines() if t.strip().startswith("{")]
    print(f"\n=== attack {attack} (kept-alive connection): HTTP {status}")
    for l in lines:
        if "step" in l:
            print(f"  {'ok ' if l['ok'] else 'no '} {l['step']}  {l.get('detail', '')}")
    return lines, None if status == 200 else f"HTTP {status}"


def test_a_workers_lend_cells_reach_no_connection_lent_to_another_environment(server):
    """Lent connections (README, "How it works"): a worker gives one back by writing its lend
    number into the cell that number names, on its environment's page. Tenant A's compromised
    worker writes a number into every cell there, as answered, again and again, while a
    connection lent to env-b2 waits for a slow CGI and its client has already sent the next
    request: that request must wait for b2's answer (the multiplexer reads only env-b2's page
    for it), and the connection goes on."""
    import threading
    report = {}
    attacker = threading.Thread(target=lambda: report.update(lines=run_attack(server, "cells&seconds=6")))
    attacker.start()
    try:
        time.sleep(0.5)
        c = Conn(server.port, timeout=20)
        status, _, body = c.request("b.test", "/cgi-bin/id.cgi")
        assert status == 200 and "server=b.test" in body, body
        # Handed back by env-b's worker and routed to env-b2: lent (its number is small, and
        # one like it is in A's cells). The next request goes out before the answer.
        c.send_request("b2.test", "/cgi-bin/id.cgi?sleep=2")
        time.sleep(0.3)
        c.send_request("b.test", "/cgi-bin/id.cgi")
        first = c.read_response()
        second = c.read_response()
        assert first[0] == 200 and "server=b2.test" in first[2], f"b2's answer first: {first}"
        assert second[0] == 200 and "server=b.test" in second[2], f"then b's: {second}"
        for host in ("b2.test", "b.test", "b2.test"):
            status, _, body = c.request(host, "/cgi-bin/id.cgi")
            assert status == 200 and f"server={host}" in body, body
        c.close()
    finally:
        attacker.join(30)
    lines, error = report.get("lines", ([], "no report"))
    wrote = [l for l in lines if l.get("step", "").startswith("wrote")]
    assert wrote and wrote[0]["ok"], f"the attack ran inside A's worker: {lines} {error}"
    received = int(wrote[0]["step"].rsplit("received=", 1)[1])
    assert 1 <= received < 10**6, f"it wrote env-a's page (connections received so far): {wrote[0]}"


def test_a_lie_about_kept_alive_answers_only_ends_that_connection(server):
    """MaxKeepAliveRequests counts a connection across environments: a hand-back carries the
    kept-alive answers it had so far, as the worker giving it back says. Tenant A's compromised
    worker hands its own client's connection back, with its true ticket and a request for
    b.test, saying 2^32 - 1. B's worker starts its conn_rec at no more than 2^30, so httpd's
    int count neither reads as -1 (a connection kept alive for ever) nor overflows: B answers
    as B, says Connection: close, and closes. The lie only ends the liar's own connection."""
    fds = worker_socket_fds(server)["handback"]
    c = Conn(server.port, timeout=15)
    c.send_request("a.test", f"/attack?attack=keepalives&fd={fds}")
    status, headers, body = c.read_response()
    assert status == 200 and "server=b.test" in body, (status, body)
    assert f"uid={server.b_uid} " in body, body
    assert headers.get("connection", "").lower() == "close", headers
    c.sock.settimeout(5)
    assert c.sock.recv(1) == b"", "B's worker kept the connection open"
    c.close()
    assert "peruser-attack keepalives: ticket" in server.apache.read_error_log()


def answers_until_close(c, hosts, answered, pause=0.0, most=150):
    """Requests on `c` to each of `hosts` in turn, each answered as that host, until an answer
    says Connection: close (or `most` more): the count of answers, `answered` before included."""
    for n in range(most):
        host = hosts[n % len(hosts)]
        status, headers, body = c.request(host, "/cgi-bin/id.cgi")
        assert status == 200 and f"server={host}" in body, (n, status, body)
        answered += 1
        if headers.get("connection", "").lower() == "close":
            break
        time.sleep(pause)
    return answered


def test_a_lie_that_a_lent_connection_was_never_kept_alive_does_not_reset_its_count(server):
    """A worker gives a lent connection back through a lend cell of its environment's page,
    with the kept-alive answers so far beside the entry. Tenant A's compromised worker leaves a
    helper that writes 0 over every count in those cells: each time A answers, the connection
    would start again at 0 and never reach MaxKeepAliveRequests 100. The multiplexer that lent
    it keeps its own count plus one as the floor, so the 101st answer still says Connection:
    close, as without the lie."""
    c = Conn(server.port, timeout=15)
    status, _, body = c.request("a.test", "/attack?attack=cellszero&seconds=30")
    assert status == 200 and '"ok": true' in body and "left a helper" in body, body
    # A pause after each answer: the helper zeroes A's last entry before the multiplexer reads it.
    answered = answers_until_close(c, ("b.test", "a.test"), answered=1, pause=0.005)
    assert answered == 101, f"the connection was told to close after {answered} answers, not 101"
    c.sock.settimeout(3)
    assert c.sock.recv(1) == b"", "the server closes after the 101st answer"
    c.close()


@pytest.fixture
def one_multiplexer(module, accounts):
    """The attack server with a single multiplexer: whatever a worker sends back reaches the
    multiplexer that lent the connection."""
    srv = Server(accounts, multiplexers=1)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def test_a_lent_connection_handed_back_by_message_keeps_its_count(one_multiplexer):
    """The same lie on the other way back: a connection lent to A (it came from B) is handed
    back by message, saying it was never kept alive. The multiplexer that lent it keeps the
    larger of that and its own count, so every answer the client saw still counts and the
    101st says Connection: close (the forged b.test request's answer stands in for A's). One
    multiplexer: with two, the other may read the message while the lender, finding "ended"
    in A's lend cell (A's own worker never gave the connection back itself), shuts it down, which
    A could do anyway with its copy."""
    server = one_multiplexer
    fds = worker_socket_fds(server)["handback"]
    c = Conn(server.port, timeout=15)
    status, _, body = c.request("b.test", "/cgi-bin/id.cgi")
    assert status == 200 and "server=b.test" in body, body
    # Handed back by B and lent to A, whose worker hands it back again with a count of 0.
    status, _, body = c.request("a.test", f"/attack?attack=keepalives&count=0&fd={fds}")
    assert status == 200 and "server=b.test" in body, (status, body)
    answered = answers_until_close(c, ("a.test", "b.test"), answered=2)
    assert answered == 101, f"the connection was told to close after {answered} answers, not 101"
    c.close()


def test_a_lent_answer_goes_back_without_a_request_made_for_nothing(server):
    """A worker gives a lent connection back as its answer's EOR bucket goes (after the access
    log), not from httpd's keep-alive loop, which first made the next request (its pool, tables,
    every module's create_request) only to give the connection back before reading a byte: at
    hundreds of tenants nearly every request is such a lend. The probe in A's worker counts the
    request_recs made there and those that got a head; over ten lends they are equal."""
    c = Conn(server.port)
    try:
        for _ in range(10):
            for host in ("b.test", "a.test"):
                status, _, body = c.request(host, "/index.html")
                assert status == 200 and body == f"site {host[0]}\n", (host, status, body)
        status, _, body = c.request("b.test", "/index.html")
        assert status == 200 and body == "site b\n", body
    finally:
        c.close()
    lines, error = run_attack(server, "requests")
    counts = next((l for l in lines if "created" in l), None)
    assert counts, f"the probe answered from A's worker: {lines} {error}"
    # Ten lent answers and this report, in the environment's one worker.
    assert counts["headed"] >= 11, counts
    assert counts["created"] == counts["headed"], f"request_recs made without a head: {counts}"
