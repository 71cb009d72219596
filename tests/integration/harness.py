"""A real Debian apache2 running this MPM, for the integration tests.

Each server gets its own ServerRoot, PidFile, ErrorLog and 127.0.0.1 ports, is started in its
own session (setsid), and is stopped by the PID from its PidFile, never by name.
"""
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(REPO, "build", "mod_mpm_peruser.so")
MODULES_DIR = "/usr/lib/apache2/modules"


def ensure_account(name, uid_hint=None):
    """Creates a system group and user `name` (no login, no home) unless they exist."""
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--gid", name, "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True)
    return pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid


def is_image(pid):
    """Whether `pid` is a process image of this MPM (see Images.swift): apache2 -f /proc/self/fd/N,
    or the zygote the environments' images are forked from (Zygote.swift)."""
    # Read together: a process that exits between the two reads is not an image any more.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        root = proc_ids(pid)[0] == 0
    except OSError:
        return False
    # Its workers carry the same command line, under their environment's uid.
    return any(a.startswith(b"/proc/self/fd/") for a in args) and b"-f" in args and root


def is_zygote(pid):
    """Whether `pid` is the image zygote (its process name says so; its images are apache2)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "peruser-zygote"
    except OSError:
        return False


def serving(apache, log_tail=0):
    """For a fixture: yields the started server `apache` to the tests, then stops it, prints the
    last `log_tail` characters of its error log (shown with a failing test) and removes its files."""
    try:
        yield apache
    finally:
        apache.stop()
        if log_tail:
            print(apache.read_error_log()[-log_tail:])
        apache.cleanup()


_ports_given = set()


def free_port():
    """A loopback port free now and never handed out before in this run: the kernel may give
    the same one to two bind(0) calls in a row once the first socket is closed (CI saw a
    configuration with the same port twice)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def load_modules(*names):
    return "\n".join(f"LoadModule {n}_module {MODULES_DIR}/mod_{n}.so" for n in names)


class Apache:
    def __init__(self, body, name="peruser"):
        self.root = tempfile.mkdtemp(prefix=f"{name}-it-")
        os.chmod(self.root, 0o755)
        for sub in ("logs", "run", "conf"):
            os.makedirs(os.path.join(self.root, sub))
        self.pidfile = os.path.join(self.root, "run", "httpd.pid")
        self.error_log = os.path.join(self.root, "logs", "error.log")
        self.access_log = os.path.join(self.root, "logs", "access.log")
        self.config = os.path.join(self.root, "conf", "httpd.conf")
        self.body = body

    def write_config(self, body=None, module=MODULE, mpm=None, log_level="info", modules=None):
        """`mpm`: the MPM's LoadModule lines (default: this module); `modules`: others to load."""
        if body is not None:
            self.body = body
        if mpm is None:
            mpm = f"LoadModule mpm_peruser_module {module}"
        if modules is None:
            modules = ("authz_core", "authz_host", "mime", "alias", "cgi", "dir", "env",
                       "reqtimeout", "setenvif", "filter", "deflate", "negotiation")
        text = f"""
ServerRoot {self.root}
PidFile {self.pidfile}
ErrorLog {self.error_log}
DefaultRuntimeDir {self.root}/run
LogLevel {log_level}
ServerName localhost
{mpm}
{load_modules(*modules)}
TypesConfig /etc/mime.types
LogFormat "%v %a %>s \\"%r\\"" vhost
CustomLog {self.access_log} vhost
User www-data
Group www-data
Timeout 20
KeepAlive On
MaxKeepAliveRequests 100
KeepAliveTimeout 5
"""
        with open(self.config, "w") as f:
            f.write(text + self.body)

    def configtest(self):
        return subprocess.run(["apache2", "-t", "-f", self.config], capture_output=True, text=True,
                              env=self.env())

    def env(self):
        env = dict(os.environ)
        env.update({"APACHE_RUN_DIR": os.path.join(self.root, "run"),
                    "APACHE_LOCK_DIR": os.path.join(self.root, "run"),
                    "APACHE_LOG_DIR": os.path.join(self.root, "logs")})
        return env

    def start(self, ports=(), timeout=20, wrapper=()):
        """Starts apache2 (it daemonizes) in a new session and waits until every port answers.
        `wrapper`: a command to run it under (e.g. prlimit with its options)."""
        result = subprocess.run([*wrapper, "setsid", "apache2", "-f", self.config, "-k", "start"],
                                capture_output=True, text=True, env=self.env(), timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"apache2 failed to start: {result.stdout}{result.stderr}\n"
                               f"{self.read_error_log()}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.pid() and all(self._port_open(p) for p in ports):
                return
            time.sleep(0.1)
        raise RuntimeError(f"apache2 did not come up:\n{self.read_error_log()}")

    @staticmethod
    def _port_open(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout=20):
        """SIGTERM to the PID in the PidFile; waits until that process is gone."""
        pid = self.pid()
        if not pid:
            return
        stop_pid(pid, timeout)

    def children(self):
        """(pid, uid, gid) of the parent's direct children other than its images and zygote, from /proc."""
        out = []
        for pid in child_pids(self.pid()):
            if is_image(pid):
                continue
            try:
                uid, gid = proc_ids(pid)
            except (OSError, IndexError, ValueError):
                continue
            out.append((pid, uid, gid))
        return out

    def images(self):
        """Pids of the parent's process images (ProcessorImage isolated): root children that
        run apache2 with a configuration from a memfd; not counted as children, nor is the
        zygote (see zygote())."""
        return [pid for pid in child_pids(self.pid()) if is_image(pid) and not is_zygote(pid)]

    def zygote(self):
        """The pid of the parent's image zygote, or None."""
        return next((pid for pid in child_pids(self.pid()) if is_zygote(pid)), None)

    def wait_children(self, count, timeout=20):
        """Waits until `count` children run, all of them past their privilege drop."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            kids = self.children()
            if len(kids) == count and all(uid != 0 for _, uid, _ in kids):
                return kids
            time.sleep(0.05)
        raise RuntimeError(f"expected {count} children, have {self.children()}")

    def read_error_log(self):
        try:
            with open(self.error_log) as f:
                return f.read()
        except OSError:
            return ""

    def read_access_log(self):
        try:
            with open(self.access_log) as f:
                return f.read()
        except OSError:
            return ""

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)


def stop_pid(pid, timeout=20):
    """SIGTERM to an apache2 parent (by the pid from its PidFile); waits until it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"apache2 pid {pid} did not stop")


def session_pids(sid):
    """Pids of every process in session `sid` (each test server is started with setsid)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def read_maps(pid, name="maps"):
    """The text of /proc/PID/maps (or smaps), the same twice in a row. Each read() gives at most
    a page of it, and a process that maps or unmaps between two reads can lose (or repeat) a line
    of the listing, so one pass is not enough for a process that is running."""
    previous = None
    for _ in range(20):
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
        try:
            pieces = []
            while piece := os.read(fd, 1 << 20):
                pieces.append(piece)
        finally:
            os.close(fd)
        text = b"".join(pieces).decode(errors="replace")
        if text == previous:
            break
        previous = text
    return text


def child_pids(parent):
    """Pids of the processes whose parent is `parent`, from /proc (those that go meanwhile are
    left out)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(stat_fields(entry)[1]) == parent:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name: [0] is the state letter, [1] the
    parent pid; field N of proc(5) is [N - 3]. Raises OSError once the process has gone."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def alive(pid):
    """Whether `pid` runs: not gone, and not exited and waiting to be reaped (a zombie, which
    takes a signal without dying of it)."""
    try:
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def cpu_ticks(pid):
    """User plus system time of process `pid` so far, in clock ticks (os.sysconf("SC_CLK_TCK"))."""
    fields = stat_fields(pid)
    return int(fields[11]) + int(fields[12])


def tracer_of(pid):
    """The pid of the process tracing `pid` (0: none), from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])


@contextlib.contextmanager
def strace_attached(pids, args):
    """strace with `args` on each of `pids`, from the moment all are traced until the block ends."""
    tracer = subprocess.Popen(["strace"] + args + [arg for pid in pids for arg in ("-p", str(pid))])
    try:
        deadline = time.time() + 15
        while not all(tracer_of(pid) != 0 for pid in pids):
            assert time.time() < deadline, f"strace did not attach to {pids}"
            time.sleep(0.05)
        yield
    finally:
        tracer.terminate()
        tracer.wait()


def paused_after(pids, syscall, microseconds, moment="exit"):
    """strace holds each of `pids` for `microseconds` after every `syscall` of theirs returns
    (`moment` "enter": before it starts), from the moment all are traced until the block ends:
    a moment between two steps of a server's process held open, so that a test can act in it."""
    return strace_attached(pids, ["-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                                  "-e", f"inject={syscall}:delay_{moment}={microseconds}"])


def traced(pids, syscalls, output):
    """strace writes `syscalls` of `pids` (payloads up to 16 bytes) into `output` from the moment
    all are traced until the block ends."""
    return strace_attached(pids, ["-qq", "-s", "16", "-e", f"trace={syscalls}", "-o", output])


def proc_ids(pid):
    """(real uid, real gid) of a process, from /proc/PID/status."""
    uid = gid = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


def raw_request(port, data, read_timeout=10, shutdown_write=False):
    """Sends raw bytes and returns everything the server sends until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        if shutdown_write:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def request_on(sock, host, path="/cgi-bin/id.cgi"):
    """One HTTP/1.1 GET on an open connection (kept alive); (status, headers, body text)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return response_on(sock)


def read_until_close(sock):
    """Everything the server sends on `sock` until it closes the connection."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def response_on(sock):
    """The next response on an open connection (not pipelined); (status, headers, body text)."""
    f = sock.makefile("rb")
    status = f.readline()
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int(f.readline().strip(), 16)
            if size == 0:
                f.readline()
                break
            body += f.read(size)
            f.readline()
    return int(status.split()[1]), headers, body.decode(errors="replace")
