"""The end of a connection: a worker sends the response, shuts its write side and keeps the
connection for httpd's lingering close (reading what the client still sends until it closes)
beside the next connections it serves, without waiting for it; when it exits, the multiplexers
take what it still keeps. The client still gets every byte of its response, and is never reset."""
import os
import pwd
import socket
import threading
import time

import pytest

from harness import Apache, free_port, proc_ids, read_until_close, serving
from test_end_to_end import get, socket_inodes
from test_process_management import wait_until
from test_status import auto_lines


def linger_server(name, extra=""):
    port = free_port()
    apache = Apache("", name=name)
    root = apache.root
    site = os.path.join(root, "site")
    os.makedirs(site)
    with open(os.path.join(site, "index.html"), "w") as f:
        f.write("hello\n")
    with open(os.path.join(site, "big.bin"), "wb") as f:
        f.write(bytes(range(256)) * 1024)  # 256 KiB
    for file in ("index.html", "big.bin"):
        os.chmod(os.path.join(site, file), 0o644)
    os.chmod(site, 0o755)
    apache.write_config(f"""
Listen 127.0.0.1:{port}
{extra}
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
<Directory {root}>
    Require all granted
</Directory>
<Processor one>
    User peruser-a
    Group peruser-a
    MinProcessors 1
    MaxProcessors 1
    MinSpareProcessors 0
</Processor>
<Processor admin>
    User peruser-b
    Group peruser-b
</Processor>
<VirtualHost 127.0.0.1:{port}>
    ServerName one.test
    DocumentRoot {site}
    ServerEnvironment one
</VirtualHost>
<VirtualHost 127.0.0.1:{port}>
    ServerName admin.test
    DocumentRoot {site}
    ServerEnvironment admin
    <Location /server-status>
        SetHandler server-status
    </Location>
</VirtualHost>
""")
    apache.port = port
    apache.start(ports=(port,))
    yield from serving(apache)


@pytest.fixture(scope="module")
def server(module, accounts):
    yield from linger_server("linger")


@pytest.fixture(scope="module")
def recycling(module, accounts):
    yield from linger_server("linger-recycling", "MaxConnectionsPerChild 1")


def one(server):
    status, body, _ = get(server.port, "admin.test", "/server-status?auto")
    assert status == 200
    return auto_lines(body)["one"]


def server_socket_holders(server_port, client_port):
    """Pids holding the server's end of the connection from `client_port`, from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == server_port and remote_port == client_port and fields[9] != "0":
                inodes.add(int(fields[9]))
    holders = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if socket_inodes(pid) & inodes:
                holders.add(int(pid))
        except OSError:
            continue
    return holders


def closing_request(server, host="one.test"):
    """A `Connection: close` request whose response is read to its end (the server's FIN),
    the client's side left open."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"GET /index.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    response = read_until_close(sock)
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"hello\n"), response[:200]
    return sock


class Trickle:
    """Sends a byte every 0.3 s; `failed` holds the error that stopped it (a reset)."""

    def __init__(self, sock):
        self.sock, self.stop, self.failed = sock, threading.Event(), None
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                self.sock.sendall(b"x")
            except OSError as error:
                self.failed = error
                return
            time.sleep(0.3)

    def end(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_a_client_that_keeps_sending_after_its_response_is_kept_by_its_idle_worker(server):
    """Connection: close, response read, and then the client trickles a byte every 0.3 s
    without closing: httpd's lingering close keeps reading for up to 30 s. The environment's
    only worker keeps that connection (read beside what it does next) and is idle at once;
    the next client gets it at once. Once the client closes, the worker lets go within its
    look interval."""
    sock = closing_request(server)
    client_port = sock.getsockname()[1]
    trickle = Trickle(sock)
    try:
        assert wait_until(lambda: one(server)["idle"] == "1", timeout=2), one(server)
        holders = server_socket_holders(server.port, client_port)
        workers = {pid for pid, uid, _ in server.children() if uid == pwd.getpwnam("peruser-a").pw_uid}
        assert holders and holders <= workers, (holders, workers)
        for _ in range(3):
            time.sleep(0.3)
            line = one(server)
            assert line["alive"] == "1" and line["idle"] == "1", line
        started = time.monotonic()
        status, body, _ = get(server.port, "one.test", "/index.html")
        assert status == 200 and body == "hello\n"
        assert time.monotonic() - started < 2, "the only worker was free for the next client"
        assert trickle.thread.is_alive() and trickle.failed is None, trickle.failed
        assert server_socket_holders(server.port, client_port) == holders, "still kept by the same worker"
    finally:
        trickle.end()
    assert trickle.failed is None, f"the kept connection was reset: {trickle.failed}"
    assert wait_until(lambda: not server_socket_holders(server.port, client_port), timeout=3), \
        "the worker closed its end once the client closed"


def test_a_closing_kept_by_a_worker_that_exits_goes_to_the_multiplexers(recycling):
    """MaxConnectionsPerChild 1: the worker exits right after its one connection. A client
    still sending after its response is not reset: the multiplexers take the lingering close
    over and read until the client closes."""
    sock = closing_request(recycling)
    client_port = sock.getsockname()[1]
    a_uid = pwd.getpwnam("peruser-a").pw_uid
    trickle = Trickle(sock)
    try:
        def multiplexers_hold():
            holders = server_socket_holders(recycling.port, client_port)
            return holders and all(proc_ids(pid)[0] not in (a_uid, 0) for pid in holders)
        assert wait_until(multiplexers_hold, timeout=5), server_socket_holders(recycling.port, client_port)
        time.sleep(1.5)
        assert trickle.thread.is_alive() and trickle.failed is None, trickle.failed
        assert multiplexers_hold()
    finally:
        trickle.end()
    assert trickle.failed is None, f"the kept connection was reset: {trickle.failed}"
    assert get(recycling.port, "one.test", "/index.html")[0] == 200


def test_bytes_sent_past_a_closing_request_do_not_cut_the_response(server):
    """A client that sends more after a `Connection: close` request (a pipelined request,
    garbage) still reads the whole response: the connection is drained, never reset."""
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port))
        # Sent beside the reading: neither side may wait on the other's buffers.
        sender = threading.Thread(target=lambda: sock.sendall(
            b"GET /big.bin HTTP/1.1\r\nHost: one.test\r\nConnection: close\r\n\r\n"
            + b"GET /index.html HTTP/1.1\r\nHost: one.test\r\n\r\n" + b"z" * 200_000))
        sender.start()
        data = read_until_close(sock)
        sender.join()
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        assert body == bytes(range(256)) * 1024
    assert get(server.port, "one.test", "/index.html")[0] == 200
