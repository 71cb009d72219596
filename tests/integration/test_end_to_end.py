"""The MPM end to end in Debian's apache2: routing, identities, keep-alive hand-back, limits."""
import hashlib
import http.client
import os
import re
import subprocess
import time

import pytest

from harness import proc_ids, raw_request, session_pids

CGI = "/cgi-bin/id.cgi"


def get(port, host, path=CGI, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("GET", path, headers={"Host": host, **(headers or {})})
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    conn.close()
    return resp.status, body, resp


def ids_of(body):
    m = re.search(r"uid=(\d+) gid=(\d+) groups=([\d,]+)", body)
    assert m, f"no ids in CGI output: {body!r}"
    return int(m.group(1)), int(m.group(2)), [int(g) for g in m.group(3).split(",")]


@pytest.mark.parametrize("host,env", [("a.test", "a"), ("b.test", "b"), ("www.b.test", "b"),
                                      ("anything.wild-a.test", "a"), ("A.TEST:80", "a")])
def test_each_vhost_cgi_runs_as_its_environment(server, host, env):
    status, body, _ = get(server.port, host)
    assert status == 200, body
    uid, gid, groups = ids_of(body)
    assert (uid, gid) == server.uids[env]
    assert groups == [gid], "a worker keeps no supplementary group of root or the multiplexer"


@pytest.mark.parametrize("host,env", [("a.test", "a"), ("b.test", "b")])
def test_mod_php_runs_in_the_environments_worker(server, host, env):
    status, body, _ = get(server.port, host, "/id.php")
    assert status == 200, body
    assert "sapi=apache2handler" in body
    assert ids_of(body)[:2] == server.uids[env]


def test_mod_php_keepalive_alternating(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    seen = []
    for host in ("b.test", "a.test", "b.test"):
        conn.request("GET", "/id.php", headers={"Host": host})
        resp = conn.getresponse()
        seen.append(ids_of(resp.read().decode())[:2])
    conn.close()
    assert seen == [server.uids["b"], server.uids["a"], server.uids["b"]]


def test_keepalive_request_for_vhost_without_environment_gets_503(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    conn.request("GET", "/index.html", headers={"Host": "a.test"})
    assert conn.getresponse().read() == b"site a\n"
    conn.request("GET", "/index.html", headers={"Host": "noenv.test"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 503


def test_address_based_vhost_is_routed_by_its_port(server):
    status, body, _ = get(server.ip_port, "whatever.test")
    assert status == 200
    assert ids_of(body)[:2] == server.uids["b"]
    assert "port=%d" % server.ip_port in body or "server=" in body


def test_unknown_host_goes_to_the_default_vhost_of_the_address(server):
    status, body, _ = get(server.port, "nobody-declared-this.test")
    assert status == 200
    assert ids_of(body)[:2] == server.uids["a"]


def test_client_address_is_the_real_one(server):
    _, body, _ = get(server.port, "b.test")
    assert "remote=127.0.0.1" in body


def test_client_address_is_the_real_one_on_every_hop_of_a_kept_alive_connection(server):
    """A worker asks the kernel (through apr) for the client of each connection it is given,
    handed off or lent: from another loopback source, every environment on one connection sees it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15, source_address=("127.0.0.3", 0))
    seen = []
    for host in ("a.test", "b.test", "a.test", "b.test"):
        conn.request("GET", CGI, headers={"Host": host})
        body = conn.getresponse().read().decode()
        seen.append((ids_of(body)[:2], re.search(r"remote=(\S+)", body).group(1)))
    conn.close()
    assert seen == [(server.uids[env], "127.0.0.3") for env in "abab"]


def test_private_file_served_by_owner_and_refused_through_other_environment(server):
    status, body, _ = get(server.port, "a.test", "/secret.txt")
    assert status == 200 and body == "secret of a\n"
    status, body, _ = get(server.port, "b.test", "/a-files/secret.txt")
    assert status == 403, body
    # The same tree's world-readable file is served through b: the 403 is the file mode at work.
    status, body, _ = get(server.port, "b.test", "/a-files/index.html")
    assert status == 200 and body == "site a\n"


def test_keepalive_alternating_environments_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    seen = []
    local_ports = set()
    for host in ("a.test", "b.test", "a.test", "b.test"):
        conn.request("GET", CGI, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
        assert not resp.will_close, "the server closed a kept-alive connection"
        seen.append(ids_of(body)[:2])
        local_ports.add(conn.sock.getsockname()[1])
    conn.close()
    assert seen == [server.uids["a"], server.uids["b"], server.uids["a"], server.uids["b"]]
    assert len(local_ports) == 1, "every request went over one TCP connection"


def split_responses(data):
    """Splits concatenated HTTP/1.1 responses (Content-Length or chunked bodies)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"truncated response: {data[:200]!r}"
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body += rest[:size]
                rest = rest[size + 2:]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        out.append((status, body.decode(errors="replace")))
    return out


def test_pipelined_requests_alternating_environments_answer_in_order(server):
    hosts = ["a.test", "a.test", "b.test", "a.test", "b.test", "b.test"]
    reqs = b"".join(f"GET /index.html HTTP/1.1\r\nHost: {h}\r\n\r\n".encode() for h in hosts)
    reqs += b"GET /index.html HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    responses = split_responses(raw_request(server.port, reqs))
    assert [b for _, b in responses] == [f"site {h[0]}\n" for h in hosts] + ["site a\n"]
    assert all(s == 200 for s, _ in responses)


def test_pipelined_cgi_requests_each_under_their_uid(server):
    hosts = ["b.test", "a.test", "b.test"]
    reqs = b"".join(f"GET {CGI} HTTP/1.1\r\nHost: {h}\r\n\r\n".encode() for h in hosts)
    reqs += f"GET {CGI} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode()
    responses = split_responses(raw_request(server.port, reqs))
    assert [ids_of(b)[:2] for _, b in responses] == [server.uids[h[0]] for h in hosts] + [server.uids["a"]]


def test_handed_back_request_is_logged_once_by_the_right_vhost(server):
    marker = "/index.html?logmark=%d" % time.monotonic_ns()
    reqs = (f"GET {marker} HTTP/1.1\r\nHost: a.test\r\n\r\n"
            f"GET {marker} HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n").encode()
    assert len(split_responses(raw_request(server.port, reqs))) == 2
    time.sleep(0.3)
    lines = [l for l in server.read_access_log().splitlines() if marker in l]
    assert sorted(l.split()[0] for l in lines) == ["a.test", "b.test"], lines


def test_vhost_without_environment_gets_503_and_the_log_names_it(server):
    status, body, resp = get(server.port, "noenv.test", "/index.html")
    assert status == 503
    assert resp.getheader("Retry-After")
    assert "try again" in body
    time.sleep(0.2)
    assert re.search(r"virtual host noenv\.test \(<VirtualHost 127\.0\.0\.1:\d+> on line \d+ of \S+\) has no ServerEnvironment", server.read_error_log())


def test_http10_without_host_goes_to_default_vhost(server):
    data = raw_request(server.port, f"GET {CGI} HTTP/1.0\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert ids_of(body.decode())[:2] == server.uids["a"]


def test_post_of_one_mebibyte_arrives_whole(server):
    payload = os.urandom(1024 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", CGI, body=payload, headers={"Host": "b.test", "Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert resp.status == 200, body
    assert f"length={len(payload)} sha256={hashlib.sha256(payload).hexdigest()}" in body
    assert ids_of(body)[:2] == server.uids["b"]


def test_post_after_a_hand_back_arrives_whole(server):
    payload = os.urandom(300 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/index.html", headers={"Host": "a.test"})
    assert conn.getresponse().read() == b"site a\n"
    conn.request("POST", CGI, body=payload, headers={"Host": "b.test"})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert f"sha256={hashlib.sha256(payload).hexdigest()}" in body
    assert ids_of(body)[:2] == server.uids["b"]


@pytest.mark.parametrize("size", [1000, 70_000, 300 * 1024])
def test_body_sent_with_its_head_survives_a_hand_back(server, size):
    """Head and body in one write: the worker of a.test has read part of the body when it
    sees the request is b.test's; every byte must still reach b.test's CGI."""
    payload = os.urandom(size)
    data = (b"GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n"
            + f"POST {CGI} HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n"
              f"Content-Length: {size}\r\n\r\n".encode() + payload)
    responses = split_responses(raw_request(server.port, data, read_timeout=30))
    assert responses[0] == (200, "site a\n")
    assert responses[1][0] == 200
    assert f"length={size} sha256={hashlib.sha256(payload).hexdigest()}" in responses[1][1]
    assert ids_of(responses[1][1])[:2] == server.uids["b"]


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1 extra words\r\nHost: a.test\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x07" * 64 + b"\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: a.test\r\n\r\n",
])
def test_malformed_requests_get_a_4xx_not_a_hang(server, request_bytes):
    data = raw_request(server.port, request_bytes, read_timeout=15, shutdown_write=True)
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", data), data[:200]
    assert get(server.port, "a.test", "/index.html")[0] == 200


def test_binary_without_line_end_is_closed_not_hung(server):
    started = time.monotonic()
    data = raw_request(server.port, b"\x16\x03\x01\x02\x00\x01\x00" + os.urandom(200),
                       read_timeout=30, shutdown_write=True)
    assert time.monotonic() - started < 25, "the server held a garbage connection open"
    assert data == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", data), data[:200]
    assert get(server.port, "a.test", "/index.html")[0] == 200


def test_64k_header_gets_a_4xx(server):
    big = b"GET /index.html HTTP/1.1\r\nHost: a.test\r\nX-Big: " + b"x" * 65536 + b"\r\n\r\n"
    data = raw_request(server.port, big, read_timeout=15)
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", data), data[:200]
    many = b"GET /index.html HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"y" * 600) for i in range(110)) \
        + b"Host: b.test\r\n\r\n"
    data = raw_request(server.port, many, read_timeout=15)
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", data), data[:200]
    assert get(server.port, "b.test", "/index.html")[0] == 200


def session_processes(server):
    """(pid, uid, gid) of every process in the server's session (it was started by setsid)."""
    out = []
    for pid in session_pids(os.getsid(server.pid())):
        try:
            out.append((pid,) + proc_ids(pid))
        except OSError:
            pass
    return out


def test_process_identities(server):
    parent = server.pid()
    procs = session_processes(server)
    by_pid = {p: (u, g) for p, u, g in procs}
    assert by_pid[parent] == (0, 0)
    # Root besides the parent: only its process images (ProcessorImage isolated, the default:
    # the multiplexers' and one per environment), which never accept or serve a connection.
    # And the zygote the environments' images were forked from, which serves nothing either.
    images = set(server.images())
    assert len(images) == 3, images
    zygote = server.zygote()
    assert zygote and zygote not in images
    others = [(p, u, g) for p, u, g in procs if p not in images | {parent, zygote}]
    assert all(u != 0 and g != 0 for _, u, g in others), f"a root process besides the parent: {others}"
    # An environment's image listens on nothing (the multiplexers' image holds the listeners
    # it passes to the multiplexers it forks), nor does the zygote.
    listening = listening_inodes()
    holding = {image: socket_inodes(image) & listening for image in images}
    assert sorted(len(h) > 0 for h in holding.values()) == [False, False, True], holding
    assert not socket_inodes(zygote) & listening
    www = (33, 33)
    a, b = server.uids["a"], server.uids["b"]
    kids = {pid: (u, g) for pid, u, g in server.children()}
    assert sum(1 for v in kids.values() if v == www) == 2, kids      # MinMultiplexers 2
    # Workers of each environment (at least MinProcessors; more start on demand).
    assert sum(1 for v in kids.values() if v == a) >= 1, kids
    assert sum(1 for v in kids.values() if v == b) >= 2, kids
    assert set(kids.values()) == {www, a, b}, kids
    ps = subprocess.run(["ps", "-o", "user=", "-p", str(parent)], capture_output=True, text=True)
    assert ps.stdout.strip() == "root"


def socket_inodes(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", target)
        if m:
            out.add(int(m.group(1)))
    return out


def listening_inodes():
    """Inodes of the listening TCP sockets of this machine."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    out.add(int(fields[9]))
    return out


def unix_inodes():
    with open("/proc/net/unix") as f:
        return {int(line.split()[6]) for line in f.readlines()[1:] if len(line.split()) > 6}


def test_workers_hold_no_listener_and_only_their_own_channel(server):
    kids = server.children()
    listening = listening_inodes()
    unix = unix_inodes()
    by_env = {"a": [], "b": []}
    for pid, uid, gid in kids:
        for env, ids in server.uids.items():
            if (uid, gid) == ids:
                by_env[env].append(socket_inodes(pid) & unix | socket_inodes(pid) & listening)
    assert by_env["a"] and by_env["b"]
    for env, socket_sets in by_env.items():
        for sockets in socket_sets:
            assert not sockets & listening, f"a worker of {env} holds a listening socket"
            assert len(sockets) == 2, f"worker of {env}: expected its hand-off and hand-back channels, got {sockets}"
    a_sockets, b_sockets = by_env["a"][0], by_env["b"][0]
    assert not a_sockets & b_sockets, "environments share a channel"
    mux = [socket_inodes(pid) for pid, uid, gid in kids if (uid, gid) == (33, 33)]
    assert all(m & listening for m in mux), "multiplexers hold the listeners"


def test_workers_cannot_regain_privileges(server):
    for pid, uid, gid in server.children():
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), f"pid {pid} lacks no_new_privs"
        ids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", status, re.M).groups()
        assert len(set(ids)) == 1 and ids[0] != "0", f"pid {pid} has mixed uids {ids}"


def test_apache_reports_the_mpm(module):
    out = subprocess.run(["apache2", "-V", "-C", f"LoadModule mpm_peruser_module {module}",
                          "-C", "User www-data", "-C", "Group www-data"],
                         capture_output=True, text=True).stdout
    assert re.search(r"Server MPM:\s+peruser", out), out
    assert re.search(r"threaded:\s+no", out), out
    assert re.search(r"forked:\s+yes \(variable process count\)", out), out
