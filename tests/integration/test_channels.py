"""Messages on the hand-off and hand-back channels are validated, never trusted.

The test takes a copy of a channel fd out of a running child with pidfd_getfd (as root), the
way a compromised process holding that fd could write to it, and sends malformed messages."""
import ctypes
import os
import socket
import struct
import time

import pytest

from test_end_to_end import get, ids_of, CGI, socket_inodes

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


def header(hops, consumed):
    return b"PRU1" + struct.pack("<HHI", hops, 0, len(consumed)) + consumed


def bad_messages():
    r, w = os.pipe()
    tcp_a, tcp_b = socket.socketpair()
    yield "no fd at all", header(0, b""), []
    yield "a pipe instead of a socket", header(0, b""), [r]
    yield "a unix socket instead of TCP", header(0, b""), [tcp_a.fileno()]
    yield "two fds", header(0, b""), [r, w]
    yield "bad magic", b"XXXX" + header(0, b"")[4:], [r]
    yield "length beyond the message", b"PRU1" + struct.pack("<HHI", 0, 0, 4096) + b"abc", [r]
    yield "short", b"PRU", [r]
    os.close(r)
    os.close(w)
    tcp_a.close()
    tcp_b.close()


def send_all_bad(channel_fd):
    sent = []
    with socket.socket(fileno=channel_fd) as chan:
        for name, payload, fds in bad_messages():
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
            chan.sendmsg([payload], anc)
            sent.append(name)
    return sent


def children_by_ids(server, ids):
    return [pid for pid, uid, gid in server.children() if (uid, gid) == ids]


def test_multiplexer_drops_invalid_hand_backs(server):
    worker = children_by_ids(server, server.uids["a"])[0]
    # The worker's two seqpacket sockets: its environment channel (read end) and the
    # hand-back write end; garbage into both must be dropped by whoever reads it.
    fds = seqpacket_fds(worker)
    assert len(fds) == 2
    before = server.read_error_log().count("dropped")
    for fd in fds:
        send_all_bad(steal_fd(worker, fd))
    time.sleep(0.5)
    log = server.read_error_log()
    assert log.count("dropped") - before >= 7, log[-3000:]
    assert "Segmentation" not in log and "exit signal" not in log
    # Everyone still serves, as the right user.
    for host, env in (("a.test", "a"), ("b.test", "b")):
        status, body, _ = get(server.port, host, CGI)
        assert status == 200 and ids_of(body)[:2] == server.uids[env]


def test_worker_drops_invalid_hand_offs(server):
    mux = children_by_ids(server, (33, 33))[0]
    workers_b = set(children_by_ids(server, server.uids["b"]))
    before = server.read_error_log().count("dropped")
    # Every channel a multiplexer holds: env write ends (read by workers) and hand-back read end.
    for fd in seqpacket_fds(mux):
        send_all_bad(steal_fd(mux, fd))
    time.sleep(0.5)
    log = server.read_error_log()
    assert log.count("dropped") - before >= 7, log[-3000:]
    assert set(children_by_ids(server, server.uids["b"])) == workers_b, "a worker died of a bad message"
    for host, env in (("a.test", "a"), ("b.test", "b")):
        status, body, _ = get(server.port, host, CGI)
        assert status == 200 and ids_of(body)[:2] == server.uids[env]
