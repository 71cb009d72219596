"""Lent connections: a kept-alive connection whose requests cross environments (a front proxy's
pooled connection) stays in the multiplexer while a worker answers one request on it; the worker
gives it back by a mark on its own page, and the multiplexer reads the next head itself. These
tests look at who holds the connection, and at every way a lent connection can end: its client
closes, a request asks to close, its worker dies, its worker reads what came next."""
import os
import signal
import socket
import time

import pytest

from conftest import make_site, site_vhost, two_environments
from harness import (Apache, free_port, proc_ids, read_until_close, response_on, serving, session_pids,
                     stat_fields)
from test_end_to_end import get, ids_of, session_processes, socket_inodes, split_responses
from test_worker_choice import served_by

CGI = "/cgi-bin/id.cgi"


def two_tenant_server(accounts, name, settings, *environment_lines):
    """a.test in env-a (peruser-a) and b.test in env-b (peruser-b), one worker each at start
    and `environment_lines` in both <Processor> blocks, CGI allowed; `settings` server-wide."""
    port = free_port()
    apache = Apache("", name=name)
    (a_uid, a_gid), (b_uid, b_gid) = accounts["peruser-a"], accounts["peruser-b"]
    a_site = make_site(apache.root, a_uid, a_gid, "a")
    b_site = make_site(apache.root, b_uid, b_gid, "b")
    apache.write_config(f"""
Listen 127.0.0.1:{port}
{settings}
{two_environments(apache.root, *environment_lines)}
{site_vhost(port, "a.test", a_site, "env-a")}
{site_vhost(port, "b.test", b_site, "env-b")}
""")
    apache.port = port
    apache.uids = {"a": (a_uid, a_gid), "b": (b_uid, b_gid)}
    apache.start(ports=(port,))
    yield from serving(apache, log_tail=3000)


@pytest.fixture(scope="module")
def server(module, accounts):
    yield from two_tenant_server(accounts, "lending", "MinMultiplexers 2")


def request(host, path="/index.html", close=False):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def read_response(sock):
    """(status, body) of the next response on a kept-alive connection."""
    status, _, body = response_on(sock)
    return status, body


def server_inode(server, client):
    """Inode of the server's end of the TCP connection whose client end is `client`."""
    port = client.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            remote_port = int(fields[2].split(":")[1], 16)
            if local_port == server.port and remote_port == port and fields[9] != "0":
                return int(fields[9])
    return None


def holders(server, inode):
    """{pid: (uid, gid)} of the server's processes that hold a descriptor of socket `inode`."""
    out = {}
    for pid in session_pids(os.getsid(server.pid())):
        try:
            if inode in socket_inodes(pid):
                out[pid] = proc_ids(pid)
        except OSError:
            pass
    return out


def wait_for(check, seconds=5.0):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def lent_connection(server):
    """A connection that crossed from env-a to env-b: its next hand-off is a lend."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.sendall(request("a.test"))
    assert read_response(sock) == (200, "site a\n")
    sock.sendall(request("b.test"))
    assert read_response(sock) == (200, "site b\n")
    return sock


MULTIPLEXER = (33, 33)


def test_while_a_worker_answers_a_crossing_request_a_multiplexer_keeps_the_connection(server):
    sock = lent_connection(server)
    inode = server_inode(server, sock)
    assert inode
    sock.sendall(request("a.test", CGI + "?sleep=2"))
    both = wait_for(lambda: (lambda h: h if MULTIPLEXER in h.values() and server.uids["a"] in h.values() else None)(
        holders(server, inode)))
    assert both, f"lent: a multiplexer and env-a's worker hold it while the CGI runs: {holders(server, inode)}"
    status, body = read_response(sock)
    assert status == 200 and ids_of(body)[:2] == server.uids["a"]
    # Given back: the worker let go of its copy; the multiplexer alone holds it, waiting.
    alone = wait_for(lambda: set(holders(server, inode).values()) == {MULTIPLEXER})
    assert alone, f"after the answer only a multiplexer holds it: {holders(server, inode)}"
    # And it goes on, across environments, under the right identities.
    for host in ("b.test", "a.test", "b.test", "b.test", "a.test"):
        sock.sendall(request(host, CGI))
        status, body = read_response(sock)
        assert status == 200 and ids_of(body)[:2] == server.uids[host[0]], body
    sock.close()


def read_calls(server, uid):
    """{pid: read(2) calls so far} of the server's processes running as `uid` (/proc/PID/io
    syscr: read and readv, the calls apr's socket reads make; recvmsg on a channel is not one)."""
    out = {}
    for pid in session_pids(os.getsid(server.pid())):
        try:
            if proc_ids(pid)[0] != uid:
                continue
            with open(f"/proc/{pid}/io") as f:
                out[pid] = int(next(l for l in f if l.startswith("syscr:")).split()[1])
        except (OSError, StopIteration, TypeError):
            pass
    return out


def test_a_lent_connections_head_comes_with_it_so_its_worker_reads_nothing_from_the_socket(server):
    """A connection back from a worker is read by the multiplexer, not peeked: the next head
    travels with the descriptor, and the worker that answers a request without a body parses
    those bytes and reads nothing from the socket. (Before, each lend cost a peek in the
    multiplexer and a read in the worker: ten lends, ten reads.) A static file is mapped, not
    read, so the worker's read calls are its socket's."""
    sock = lent_connection(server)
    uid = server.uids["a"][0]
    before = read_calls(server, uid)
    assert before, "env-a has a worker"
    for _ in range(10):
        sock.sendall(request("a.test"))
        assert read_response(sock) == (200, "site a\n")
        sock.sendall(request("b.test"))
        assert read_response(sock) == (200, "site b\n")
    after = read_calls(server, uid)
    sock.close()
    assert set(after) == set(before), f"the same env-a workers answered: {before} then {after}"
    reads = sum(after[pid] - before[pid] for pid in before)
    assert reads < 5, f"env-a's worker read its socket {reads} times for ten lent requests"


def test_a_lent_connection_its_client_closes_is_let_go(server):
    sock = lent_connection(server)
    inode = server_inode(server, sock)
    sock.sendall(request("a.test"))
    assert read_response(sock) == (200, "site a\n")
    sock.close()
    gone = wait_for(lambda: not holders(server, inode), 3)
    assert gone, f"nothing of the server holds a connection its client closed: {holders(server, inode)}"


def test_a_lent_connection_asked_to_close_ends_after_its_answer(server):
    sock = lent_connection(server)
    inode = server_inode(server, sock)
    sock.sendall(request("a.test", close=True))
    status, body = read_response(sock)
    assert (status, body) == (200, "site a\n")
    sock.settimeout(3)
    started = time.monotonic()
    assert sock.recv(100) == b"", "the server closes after Connection: close"
    assert time.monotonic() - started < 2.5
    sock.close()
    assert wait_for(lambda: not holders(server, inode), 3), holders(server, inode)


def test_requests_pipelined_on_a_lent_connection_are_answered_in_order(server):
    sock = lent_connection(server)
    hosts = ["a.test", "a.test", "b.test", "a.test", "b.test"]
    sock.sendall(b"".join(request(h, CGI) for h in hosts) + request("a.test", CGI, close=True))
    sock.settimeout(15)
    data = read_until_close(sock)
    responses = split_responses(data)
    assert [ids_of(b)[:2] for _, b in responses] == [server.uids[h[0]] for h in hosts] + [server.uids["a"]]
    sock.close()


def test_max_keep_alive_requests_counts_the_connection_not_each_environments_part(server):
    """MaxKeepAliveRequests 100 (the harness's): a connection whose requests alternate between
    environments gets 100 kept-alive answers and a 101st with Connection: close, as on one
    environment and as httpd counts it. Each environment's part is a new conn_rec in its worker;
    counted there alone, the connection never reached the limit."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    answered_as = set()
    for n in range(1, 106):
        host = "ab"[n % 2]
        sock.sendall(request(f"{host}.test", CGI))
        status, headers, body = response_on(sock)
        assert status == 200, (n, status, body)
        answered_as.add(tuple(ids_of(body)[:2]))
        if headers.get("connection", "").lower() == "close":
            break
    assert n == 101, f"the connection was told to close after {n} answers, not 101"
    assert answered_as == {server.uids["a"], server.uids["b"]}, answered_as
    sock.settimeout(3)
    assert sock.recv(100) == b"", "the server closes after the 101st answer"
    sock.close()


def test_max_keep_alive_requests_counts_pipelined_requests_that_cross(server):
    """The same with every request sent at once: a worker that read the next head hands the
    connection back by message with what it read, and the count travels with it."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.sendall(b"".join(request("ab"[n % 2] + ".test") for n in range(1, 121)))
    data = read_until_close(sock)
    sock.close()
    responses = split_responses(data)
    assert len(responses) == 101, f"{len(responses)} answers before the close, not 101"
    assert [body for _, body in responses[:4]] == ["site b\n", "site a\n"] * 2
    assert data.rsplit(b"HTTP/1.1 200", 1)[1].lower().count(b"connection: close") == 1, "the last says it closes"
    assert data.lower().count(b"connection: close") == 1


def test_a_multiplexer_late_to_look_still_finds_its_lent_connection_given_back(server):
    """A multiplexer starved of CPU (here: stopped) while the worker that answered on its lent
    connection gives back many others still finds the mark when the client's next request comes,
    instead of closing the connection as lost. Workers gave back into a ring of 32 marks, then
    256; under load (alternating vhosts, 2 CPUs) multiplexers were late by more than 32, and a
    worker of a busy tenant behind a front proxy gives back 256 in about 20 ms (random keep-alive
    over three tenants lost a pooled connection every few seconds). So here env-a's worker gives
    back about 700 others while the multiplexer is stopped."""
    sock = lent_connection(server)
    inode = server_inode(server, sock)
    sock.sendall(request("a.test"))  # lent to env-a, answered, given back
    assert read_response(sock) == (200, "site a\n")
    held = wait_for(lambda: list(holders(server, inode).values()) == [MULTIPLEXER] and holders(server, inode))
    assert held, holders(server, inode)
    (multiplexer,) = held
    os.kill(multiplexer, signal.SIGSTOP)
    try:
        # Connect only once it has stopped: a multiplexer woken for a new connection and stopped
        # before it accepts keeps that wake-up (EPOLLEXCLUSIVE), and the other one sleeps on.
        assert wait_for(lambda: stat_fields(multiplexer)[0] == "T", 2), stat_fields(multiplexer)
        # About 700 other connections lent to env-a and given back, through the other
        # multiplexer: 15 connections alternating between the two sites, each up to
        # MaxKeepAliveRequests (100), so about 48 lends to env-a on each.
        for _ in range(15):
            other = lent_connection(server)
            for _ in range(48):
                other.sendall(request("a.test"))
                assert read_response(other) == (200, "site a\n")
                other.sendall(request("b.test"))
                assert read_response(other) == (200, "site b\n")
            other.close()
        time.sleep(1.2)  # past the second after which a lent connection nobody shows is lost
    finally:
        os.kill(multiplexer, signal.SIGCONT)
    sock.sendall(request("a.test"))
    assert read_response(sock) == (200, "site a\n")
    sock.sendall(request("b.test", close=True))
    assert read_response(sock) == (200, "site b\n")
    sock.close()


def test_a_lent_connection_whose_worker_dies_is_closed_not_left_hanging(server):
    sock = lent_connection(server)
    inode = server_inode(server, sock)
    sock.sendall(request("a.test", CGI + "?sleep=30"))
    worker = wait_for(lambda: [pid for pid, ids in holders(server, inode).items() if ids == server.uids["a"]])
    assert worker, holders(server, inode)
    assert MULTIPLEXER in holders(server, inode).values(), "lent: a multiplexer holds it too"
    os.kill(worker[0], signal.SIGKILL)
    sock.settimeout(10)
    started = time.monotonic()
    got = b""
    try:
        while chunk := sock.recv(65536):  # what the CGI wrote before it slept, then the end
            got += chunk
    except ConnectionResetError:
        pass
    assert time.monotonic() - started < 6, "a lent connection whose worker died is closed within seconds"
    assert not got.endswith(b"0\r\n\r\n"), f"the answer was cut, and the client can tell: {got!r}"
    sock.close()
    assert wait_for(lambda: not holders(server, inode), 3), holders(server, inode)
    # The environment serves again (the parent replaced its worker).
    fresh = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    fresh.sendall(request("a.test", close=True))
    assert read_response(fresh) == (200, "site a\n")
    fresh.close()


def test_a_graceful_restart_finishes_a_lent_answer_and_the_old_multiplexers(server):
    """At a graceful restart the answer in flight on a lent connection arrives whole (then the
    connection may close, as httpd closes kept-alive connections at a restart), the old
    multiplexers finish instead of keeping lent connections, and crossing goes on in the new
    generation. A multiplexer that is stopping lends nothing."""
    sock = lent_connection(server)
    # session_processes skips a process that exits while it looks (a CGI, a recycled worker).
    old_multiplexers = {pid for pid, uid, gid in session_processes(server) if (uid, gid) == MULTIPLEXER}
    assert old_multiplexers
    sock.sendall(request("a.test", CGI + "?sleep=1"))   # lent while the restart begins
    time.sleep(0.3)
    generations = server.read_error_log().count("peruser: generation ")
    os.kill(server.pid(), signal.SIGUSR1)
    status, body = read_response(sock)
    assert status == 200 and ids_of(body)[:2] == server.uids["a"], body
    sock.close()
    assert wait_for(lambda: server.read_error_log().count("peruser: generation ") > generations, 10)

    def old_ones_left():
        alive = set()
        for pid in old_multiplexers:
            try:
                os.kill(pid, 0)
                alive.add(pid)
            except ProcessLookupError:
                pass
        return alive
    assert wait_for(lambda: not old_ones_left(), 10), f"old multiplexers still running: {old_ones_left()}"
    fresh = lent_connection(server)
    for host in ("a.test", "b.test", "a.test"):
        fresh.sendall(request(host, CGI))
        status, body = read_response(fresh)
        assert status == 200 and ids_of(body)[:2] == server.uids[host[0]], body
    fresh.close()


@pytest.fixture(scope="module")
def recycling(module, accounts):
    """MaxConnectionsPerChild 3, one worker per environment (MaxProcessors 1): every request of
    an environment goes to the same worker until it recycles."""
    yield from two_tenant_server(accounts, "lending-recycling", "MaxConnectionsPerChild 3", "MaxProcessors 1")


def test_a_connection_lent_back_again_counts_once_toward_max_connections_per_child(recycling):
    """A front proxy's pooled connection crosses environments at every request, so each of its
    requests reaches a worker as a lend. It is one connection: with MaxConnectionsPerChild 3,
    twelve requests alternating between two environments are answered by the same two
    workers (counting each lend, each would have been replaced after its third). New
    connections still count: the third after it is answered by a new worker."""
    sock = socket.create_connection(("127.0.0.1", recycling.port), timeout=15)
    pids = {"a": [], "b": []}
    for n in range(12):
        host = "ab"[n % 2]
        sock.sendall(request(f"{host}.test", CGI))
        status, headers, body = response_on(sock)
        assert status == 200, (n, status, body)
        assert headers.get("connection", "").lower() != "close", (n, headers)
        pids[host].append(served_by(body))
    sock.close()
    assert len(set(pids["a"])) == 1 and len(set(pids["b"])) == 1, pids
    first = pids["a"][0]
    after = []
    for _ in range(4):
        status, body, _ = get(recycling.port, "a.test", CGI)
        assert status == 200, body
        after.append(served_by(body))
    # The kept-alive connection counted 1 in env-a's worker; two new ones make 3, and it exits.
    assert after[:2] == [first, first], (first, after)
    assert first not in after[2:], (first, after)


def crossed_to_a(server):
    """A connection whose first request went to env-b and whose second, to env-a, was lent:
    env-a's worker counted it (a new connection for it) and gave it back by its ring."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.sendall(request("b.test"))
    assert read_response(sock) == (200, "site b\n")
    sock.sendall(request("a.test", CGI))
    status, body = read_response(sock)
    assert status == 200 and ids_of(body)[:2] == server.uids["a"], body
    return sock, served_by(body)


def test_a_worker_that_recycles_right_after_a_lent_answer_leaves_that_connection_open(recycling):
    """A worker that reaches MaxConnectionsPerChild with a lent connection exits right after it
    gave it back by the mark on its page; a multiplexer that had not looked at the page by then
    found nobody showing the connection and closed it a second later: a front proxy's pooled
    connection lost, once per recycled worker. Each of these four connections is the first of
    its kind for env-a's worker (MaxProcessors 1, MaxConnectionsPerChild 3), so at least one is
    the last its worker serves; every one still answers after that second."""
    connections = [crossed_to_a(recycling) for _ in range(4)]
    pids = [pid for _, pid in connections]
    assert len(set(pids)) >= 2, f"env-a's worker recycled during the test: {pids}"
    time.sleep(1.5)  # past the second after which a lent connection nobody shows is lost
    for n, (sock, _) in enumerate(connections):
        sock.sendall(request("b.test", close=True))
        try:
            answer = read_response(sock)
        except (OSError, IndexError, ValueError) as error:  # closed: no status line
            answer = error
        assert answer == (200, "site b\n"), (n, pids, answer)
        sock.close()

