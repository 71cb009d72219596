"""Messages on the hand-off and hand-back channels are validated, never trusted; channels are
one-way (the receiving end cannot send); a hand-back must carry the ticket of a connection that
was handed to that environment; and what a tenant can make the multiplexers log is rate-limited.

The test takes a copy of a channel fd out of a running child with pidfd_getfd (as root), the
way a compromised process holding that fd could write to it, and sends malformed messages."""
import ctypes
import os
import socket
import struct
import time

from test_end_to_end import get, ids_of, CGI

SYS_pidfd_getfd = 438
libc = ctypes.CDLL(None, use_errno=True)


def steal_fd(pid, fd):
    pidfd = os.pidfd_open(pid)
    try:
        new = libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        if new < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return new
    finally:
        os.close(pidfd)


def seqpacket_fds(pid):
    """fd numbers of the SOCK_SEQPACKET unix sockets a process holds."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
            continue
        try:
            s = socket.socket(fileno=steal_fd(pid, int(fd)))
        except OSError:
            continue
        try:
            if s.family == socket.AF_UNIX and s.type == socket.SOCK_SEQPACKET:
                out.append(int(fd))
        finally:
            s.close()
    return out


def header(hops, consumed, ticket=0, client=bytes(16)):
    """HandoffMessage: magic, hops, flags, length, ticket, client (16 bytes), lend number,
    kept-alive responses, consumed bytes."""
    return b"PRU5" + struct.pack("<HHIQ", hops, 0, len(consumed), ticket) + client + bytes(12) + consumed


def bad_messages():
    r, w = os.pipe()
    tcp_a, tcp_b = socket.socketpair()
    yield "no fd at all", header(0, b""), []
    yield "a pipe instead of a socket", header(0, b""), [r]
    yield "a unix socket instead of TCP", header(0, b""), [tcp_a.fileno()]
    yield "two fds", header(0, b""), [r, w]
    yield "bad magic", b"XXXX" + header(0, b"")[4:], [r]
    yield "length beyond the message", b"PRU5" + struct.pack("<HHIQ", 0, 0, 4096, 0) + bytes(28) + b"abc", [r]
    yield "short", b"PRU", [r]
    os.close(r)
    os.close(w)
    tcp_a.close()
    tcp_b.close()


def send_all_bad(channel_fd, rounds=1):
    """Sends every bad message `rounds` times; returns how many were sent, or None when the
    channel refuses to send at all (its receiving end)."""
    sent = 0
    with socket.socket(fileno=channel_fd) as chan:
        for _ in range(rounds):
            for name, payload, fds in bad_messages():
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
                try:
                    chan.sendmsg([payload], anc, socket.MSG_DONTWAIT)
                except BrokenPipeError:
                    return None
                except BlockingIOError:
                    time.sleep(0.01)
                    continue
                sent += 1
    return sent


def children_by_ids(server, ids):
    return [pid for pid, uid, gid in server.children() if (uid, gid) == ids]


def everyone_serves(server):
    for host, env in (("a.test", "a"), ("b.test", "b")):
        status, body, _ = get(server.port, host, CGI)
        assert status == 200 and ids_of(body)[:2] == server.uids[env]


def test_multiplexer_drops_invalid_hand_backs_and_logs_them_rate_limited(server):
    worker = children_by_ids(server, server.uids["a"])[0]
    # The worker's two seqpacket sockets: its hand-off channel's receiving end, which cannot
    # send, and its environment's hand-back channel, whose garbage the multiplexers drop.
    fds = seqpacket_fds(worker)
    assert len(fds) == 2
    results = [send_all_bad(steal_fd(worker, fd), rounds=40) for fd in fds]
    assert sorted(results, key=lambda r: r is not None)[0] is None, f"both ends of a worker can send: {results}"
    sent = max(r for r in results if r is not None)
    assert sent >= 200, sent
    time.sleep(0.5)
    log = server.read_error_log()
    dropped = log.count("dropped an invalid") + log.count("never handed to it")
    assert 1 <= dropped <= 20, f"{sent} bad hand-backs gave {dropped} log lines (want a few, rate-limited)"
    assert "Segmentation" not in log and "exit signal" not in log
    everyone_serves(server)


def test_a_forged_hand_back_of_a_connection_never_handed_to_the_environment_is_refused(server):
    """An outbound TCP socket of the worker's own, dressed up as a hand-back with a request for
    b.test: the multiplexer must not route it (it carries no valid ticket)."""
    # Lines of one kind are written once per 5 s: let an earlier test's lines age out.
    time.sleep(5.5)
    worker = children_by_ids(server, server.uids["a"])[0]
    chan = None
    for fd in seqpacket_fds(worker):
        s = socket.socket(fileno=steal_fd(worker, fd))
        try:
            s.sendmsg([header(1, b"")], [], socket.MSG_DONTWAIT)
        except BrokenPipeError:
            s.close()
            continue
        chan = s
    assert chan is not None
    before = server.read_error_log().count("never handed to it")
    # A real connection to the server, from "the worker": forged with a request line for b.test.
    own = socket.create_connection(("127.0.0.1", server.port))
    request = b"GET /cgi-bin/id.cgi HTTP/1.1\r\nHost: b.test\r\n\r\n"
    for ticket in (0, 0x1234_5678_9abc_def0):
        chan.sendmsg([header(1, request, ticket)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", own.fileno()))])
    chan.close()
    time.sleep(0.5)
    assert server.read_error_log().count("never handed to it") > before
    # Nothing answered on `own` from b's worker: the forged request was never served.
    own.settimeout(0.5)
    try:
        data = own.recv(4096)
    except (socket.timeout, ConnectionResetError):
        data = b""
    own.close()
    assert b"uid=" not in data, data
    everyone_serves(server)


def test_worker_drops_invalid_hand_offs(server):
    mux = children_by_ids(server, (33, 33))[0]
    workers_b = set(children_by_ids(server, server.uids["b"]))
    before = server.read_error_log().count("dropped")
    # Every channel a multiplexer holds: hand-off sending ends (read by workers), and hand-back
    # receiving ends, which cannot send.
    results = [send_all_bad(steal_fd(mux, fd)) for fd in seqpacket_fds(mux)]
    assert None in results, f"a multiplexer's hand-back end can send: {results}"
    time.sleep(0.5)
    log = server.read_error_log()
    assert log.count("dropped") - before >= 7, log[-3000:]
    assert set(children_by_ids(server, server.uids["b"])) == workers_b, "a worker died of a bad message"
    everyone_serves(server)


def test_a_flood_of_free_signals_from_a_worker_is_only_wake_ups(server):
    """FreeSignal: four bytes, no descriptor, from a worker that came free while connections
    waited. A compromised worker can send it at will on its hand-back channel: each one costs a
    multiplexer a turn and nothing else (no log line, no connection moved, no other
    environment touched). A message without a descriptor that is not the signal is still an
    invalid hand-back."""
    time.sleep(5.5)  # lines of one kind are written once per 5 s: let an earlier test's age out
    worker = children_by_ids(server, server.uids["a"])[0]
    before = server.read_error_log().count("dropped an invalid message")
    sent = 0
    for fd in seqpacket_fds(worker):
        with socket.socket(fileno=steal_fd(worker, fd)) as chan:
            try:
                for _ in range(2000):
                    try:
                        chan.sendmsg([b"PRUF"], [], socket.MSG_DONTWAIT)
                        sent += 1
                    except BlockingIOError:
                        time.sleep(0.01)
            except BrokenPipeError:
                continue  # the hand-off channel's receiving end
    assert sent >= 1000, sent
    time.sleep(0.5)
    assert server.read_error_log().count("dropped an invalid message") == before, server.read_error_log()[-2000:]
    everyone_serves(server)
    for fd in seqpacket_fds(worker):
        with socket.socket(fileno=steal_fd(worker, fd)) as chan:
            try:
                chan.sendmsg([b"PRUG"], [], socket.MSG_DONTWAIT)
            except BrokenPipeError:
                continue
    time.sleep(0.5)
    assert server.read_error_log().count("dropped an invalid message") > before
    everyone_serves(server)
