"""Hostile clients against the multiplexers: fd exhaustion pauses accepting instead of spinning,
a head trickled one byte per packet is still routed and served, the log lines a client can
cause are rate-limited, and `PeruserHandBack Off` answers 421 and closes where a kept-alive
connection would otherwise move to another environment."""
import hashlib
import os
import socket
import struct
import time

import pytest

from conftest import make_site, site_vhost, two_environments
from harness import Apache, cpu_ticks, free_port, paused_after, request_on, serving
from test_end_to_end import CGI, get, ids_of
from test_process_management import wait_until


def config(apache, port, sites, extra=""):
    a_site, b_site = sites
    return f"""Listen 127.0.0.1:{port}
MinMultiplexers 1
MaxMultiplexers 1
MinSpareProcessors 0
MultiplexerHeadTimeout 4
{extra}
{two_environments(apache.root)}
{site_vhost(port, "a.test", a_site, "env-a")}
{site_vhost(port, "b.test", b_site, "env-b")}
<VirtualHost 127.0.0.1:{port}>
    ServerName noenv.test
    DocumentRoot {b_site}
</VirtualHost>
"""


def start(accounts, extra="", wrapper=()):
    port = free_port()
    apache = Apache("", name="hostile-clients")
    sites = (make_site(apache.root, *accounts["peruser-a"], "a"), make_site(apache.root, *accounts["peruser-b"], "b"))
    apache.write_config(config(apache, port, sites, extra))
    apache.port = port
    apache.uids = {"a": accounts["peruser-a"], "b": accounts["peruser-b"]}
    apache.start(ports=(port,), wrapper=wrapper)
    apache.wait_children(3)
    return apache


@pytest.fixture(scope="module")
def plain(module, accounts):
    apache = start(accounts)
    yield from serving(apache)


def cpu_seconds(pid):
    return cpu_ticks(pid) / 100.0


def multiplexers(apache):
    return [pid for pid, uid, _ in apache.children() if uid == 33]


def test_fd_exhaustion_pauses_accepting_instead_of_spinning(module, accounts):
    # 64 descriptors: the multiplexer runs out after a few dozen idle connections.
    apache = start(accounts, wrapper=("prlimit", "--nofile=64:64"))
    clients = []
    try:
        for _ in range(90):
            # A partial head: Apache's listeners defer accept (TCP_DEFER_ACCEPT) until data comes.
            c = socket.create_connection(("127.0.0.1", apache.port), timeout=5)
            c.sendall(b"GET / HTTP/1.1\r\n")
            clients.append(c)
        time.sleep(0.5)
        mux = multiplexers(apache)
        assert len(mux) == 1
        before = cpu_seconds(mux[0])
        time.sleep(2)
        used = cpu_seconds(mux[0]) - before
        log = apache.read_error_log()
        assert "Too many open files" in log and "not accepting for 100 ms" in log, log[-2000:]
        assert used < 0.4, f"the multiplexer used {used:.2f} s of CPU in 2 s at fd exhaustion (spinning)"
        assert log.count("not accepting for") <= 5, "the fd-exhaustion line is not rate-limited"
        for c in clients:
            c.close()
        clients = []
        time.sleep(0.5)
        status, body, _ = get(apache.port, "a.test")
        assert status == 200 and ids_of(body)[:2] == apache.uids["a"]
    finally:
        for c in clients:
            c.close()
        apache.stop()
        apache.cleanup()


def trickle(port, data, pause=0.002):
    """Sends `data` one byte per packet; returns the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            s.send(data[i:i + 1])
            time.sleep(pause)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("host,env", [("a.test", "a"), ("b.test", "b")])
def test_a_head_trickled_one_byte_per_packet_is_routed_and_served_whole(plain, host, env):
    body = b"x" * 300
    head = (f"POST {CGI} HTTP/1.1\r\nX-Padding: {'p' * 200}\r\nHost: {host}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    answer = trickle(plain.port, head + body).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 200"), answer[:300]
    assert ids_of(answer)[:2] == plain.uids[env]
    assert f"length={len(body)} sha256={hashlib.sha256(body).hexdigest()}" in answer, answer


def test_a_trickled_tls_opening_is_never_answered_in_plain_text_by_the_multiplexer(plain):
    """A handshake record header promising 16 KiB, then a trickle: held under the head
    timeout as TLS (consumed, since it did not come at once), then passed to the address's
    first vhost as the original's rule says; never a plain-text 408 from the multiplexer."""
    with socket.create_connection(("127.0.0.1", plain.port), timeout=20) as s:
        s.sendall(bytes([0x16, 0x03, 0x01, 0x40, 0x00]))
        for _ in range(50):
            s.send(b"\x01")
            time.sleep(0.002)
        s.settimeout(8)
        try:
            data = s.recv(4096)
        except (socket.timeout, ConnectionResetError):
            data = b""
        assert b"Request Timeout" not in data, data
    status, body, _ = get(plain.port, "a.test")
    assert status == 200


def test_an_unfinished_head_is_answered_as_httpd_answers_it(plain):
    """At the head timeout, httpd answers 408 once the request line is complete and closes
    silently before (measured under prefork, with and without mod_reqtimeout); so does the
    multiplexer (at MultiplexerHeadTimeout, its own deadline against slow clients)."""
    line_done = socket.create_connection(("127.0.0.1", plain.port), timeout=10)
    line_done.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
    bare_cr = socket.create_connection(("127.0.0.1", plain.port), timeout=10)
    bare_cr.sendall(b"GET / HTTP/1.0\r\r")
    try:
        assert line_done.recv(100).startswith(b"HTTP/1.1 408")
        assert bare_cr.recv(100) == b"", "no answer before a whole request line"
    finally:
        line_done.close()
        bare_cr.close()


def test_a_flood_of_requests_to_a_vhost_without_environment_logs_a_few_lines(plain):
    before = plain.read_error_log().count("has no ServerEnvironment; answered 503")
    for _ in range(100):
        status, _, _ = get(plain.port, "noenv.test", "/")
        assert status == 503
    log = plain.read_error_log()
    lines = log.count("has no ServerEnvironment; answered 503") - before
    assert 1 <= lines <= 3, f"100 requests to a vhost without environment wrote {lines} lines"


def test_handback_off_answers_421_and_closes_instead_of_moving_the_connection(module, accounts):
    apache = start(accounts, extra="PeruserHandBack Off")
    try:
        with socket.create_connection(("127.0.0.1", apache.port), timeout=10) as sock:
            status, _, body = request_on(sock, "a.test")
            assert status == 200 and ids_of(body)[:2] == apache.uids["a"]
            status, headers, _ = request_on(sock, "b.test")
            assert status == 421, status
            assert headers.get("connection", "").lower() == "close", headers
            sock.settimeout(5)
            assert sock.recv(1) == b"", "the connection stays open after 421"
        # A new connection for b.test is routed to b as usual.
        status, body, _ = get(apache.port, "b.test")
        assert status == 200 and ids_of(body)[:2] == apache.uids["b"]
    finally:
        apache.stop()
        apache.cleanup()


def test_handback_on_by_default_moves_the_connection(plain):
    with socket.create_connection(("127.0.0.1", plain.port), timeout=10) as sock:
        for host in ("a.test", "b.test", "a.test"):
            status, _, body = request_on(sock, host)
            assert status == 200 and ids_of(body)[:2] == plain.uids[host[0]]


@pytest.mark.parametrize("head", [
    b"GET http://[4712::abcd::]/ HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: bad_host!\r\n\r\n",
    b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
])
def test_heads_that_make_apache_log_while_routing_do_not_crash_a_multiplexer(module, accounts, head):
    """Routing calls Apache's vhost code on a request the multiplexer builds; at LogLevel debug
    it logs about such heads, which runs every module's generate_log_id hook (mod_unique_id
    reads the request's subprocess_env). Found by Apache's own test suite: the multiplexer died
    with SIGSEGV and every connection it held was reset."""
    apache = start(accounts, extra="LogLevel debug\nLoadModule unique_id_module /usr/lib/apache2/modules/mod_unique_id.so")
    try:
        with socket.create_connection(("127.0.0.1", apache.port), timeout=10) as s:
            s.sendall(head)
            answer = s.recv(100)
        assert answer.startswith(b"HTTP/1."), answer
        assert "killed by signal" not in apache.read_error_log(), apache.read_error_log()[-2000:]
        status, body, _ = get(apache.port, "a.test")
        assert status == 200
    finally:
        apache.stop()
        apache.cleanup()


def test_a_client_that_resets_while_a_worker_takes_its_connection_costs_no_warning(module, accounts):
    """A client sends its request and resets the connection while env-a's worker is taking it:
    the worker is given a socket with no peer any more. Core refuses such a connection with an
    info line (AH00138, apr's getpeername), the worker closes it and serves on; nothing at warn
    or above, for a client's reset is not the server's trouble (the worker's own check used to
    log "not a connected TCP socket" for it). strace holds the moment open: a pause after each
    recvmsg of env-a's workers."""
    apache = start(accounts)
    try:
        status, body, _ = get(apache.port, "a.test")
        assert status == 200 and ids_of(body)[:2] == apache.uids["a"]
        workers = [pid for pid, uid, gid in apache.children() if (uid, gid) == apache.uids["a"]]
        assert workers
        fds_before = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in workers}
        mark = len(apache.read_error_log())
        with paused_after(workers, "recvmsg", 1500000):
            sock = socket.create_connection(("127.0.0.1", apache.port), timeout=10)
            sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n")
            time.sleep(0.5)  # routed and handed off: the worker is in its pause after recvmsg
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, not a FIN
            assert wait_until(lambda: "AH00138" in apache.read_error_log()[mark:], timeout=10), \
                apache.read_error_log()[mark:]
        status, body, _ = get(apache.port, "a.test")
        assert status == 200 and ids_of(body)[:2] == apache.uids["a"]
        log = apache.read_error_log()[mark:]
        loud = [line for line in log.splitlines()
                if any(f":{level}]" in line for level in ("warn", "error", "crit", "alert", "emerg"))]
        assert not loud, loud
        assert wait_until(lambda: all(len(os.listdir(f"/proc/{pid}/fd")) <= fds_before[pid] for pid in workers)), \
            {pid: (fds_before[pid], len(os.listdir(f"/proc/{pid}/fd"))) for pid in workers}
    finally:
        apache.stop()
        apache.cleanup()
