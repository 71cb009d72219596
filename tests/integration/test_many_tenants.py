"""Hundreds of tenants on one box (issue 15): 300 environments, each with its own system user,
start at the default limits with no slot arithmetic; a spare count the user did not write gives
way to a maximum the user did; quiet environments give their workers back; the status page
stays readable and ?auto parseable. Behaviour only: figures are in bench/many_tenants.py."""
import contextlib
import http.client
import os
import pwd
import random
import re
import signal
import threading
import time
from collections import Counter

import pytest

from conftest import ID_CGI, site_vhost
from harness import Apache, ensure_account, free_port, raw_request, serving, traced
from test_config import configtest
from test_end_to_end import get
from test_process_management import wait_until

TENANTS = 300
# The 1,000-environment box's numeric uids and gids (no accounts: `User #N`).
THOUSAND_UIDS = 50000


@pytest.fixture(scope="session")
def tenant_accounts():
    """peruser-t000 ... peruser-t299: real system users, created where missing."""
    names = [f"peruser-t{n:03d}" for n in range(TENANTS)]
    missing = []
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            missing.append(name)
    for name in missing:
        ensure_account(name)
    return {name: pwd.getpwnam(name).pw_uid for name in names}


def tenants_config(root, port, names, extra=""):
    """One <Processor> and two names per tenant, MinProcessors 0, a shared root-owned site whose
    CGI reports the uid; no ServerLimit, MaxClients or spare counts written."""
    site = os.path.join(root, "site")
    os.makedirs(os.path.join(site, "cgi-bin"), exist_ok=True)
    with open(os.path.join(site, "index.html"), "w") as f:
        f.write("hello\n")
    cgi = os.path.join(site, "cgi-bin", "id.cgi")
    with open(cgi, "w") as f:
        f.write(ID_CGI)
    os.chmod(cgi, 0o755)
    os.chmod(site, 0o755)
    os.chmod(os.path.join(site, "cgi-bin"), 0o755)
    parts = [f"""Listen 127.0.0.1:{port}
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
ExtendedStatus On
<Directory {site}>
    Require all granted
</Directory>
<Processor admin>
    User peruser-a
    Group peruser-a
</Processor>
<VirtualHost 127.0.0.1:{port}>
    ServerName status.test
    DocumentRoot {site}
    ServerEnvironment admin
    <Location /server-status>
        SetHandler server-status
    </Location>
</VirtualHost>
{extra}"""]
    for n, name in enumerate(names):
        parts.append(f"""<Processor t{n:03d}>
    User {name}
    Group {name}
</Processor>
<VirtualHost 127.0.0.1:{port}>
    ServerName t{n:03d}.test
    ServerAlias www.t{n:03d}.test
    DocumentRoot {site}
    ScriptAlias /cgi-bin/ {site}/cgi-bin/
    ServerEnvironment t{n:03d}
</VirtualHost>""")
    return "\n".join(parts) + "\n"


def workers_by_uid(apache):
    return Counter(uid for _, uid, _ in apache.children())


@contextlib.contextmanager
def tenants_server(name, tenant_accounts, count, extra="", timeout=20):
    """A server of the first `count` tenants (tenants_config with `extra`), started; yields
    (apache, port, names) and stops it after the block."""
    port = free_port()
    apache = Apache("", name=name)
    names = sorted(tenant_accounts)[:count]
    apache.write_config(tenants_config(apache.root, port, names, extra=extra))
    try:
        apache.start(ports=(port,), timeout=timeout)
        yield apache, port, names
    finally:
        apache.stop()
        apache.cleanup()


@pytest.fixture(scope="module")
def defaults_server(module, accounts, tenant_accounts):
    port = free_port()
    apache = Apache("", name="tenants")
    apache.write_config(tenants_config(apache.root, port, sorted(tenant_accounts)))
    apache.port = port
    result = apache.configtest()
    apache.configtest_output = result.stdout + result.stderr
    assert result.returncode == 0, apache.configtest_output
    apache.start(ports=(port,), timeout=60)
    yield from serving(apache)


def test_300_environments_start_at_the_default_limits(defaults_server, tenant_accounts):
    out = defaults_server.configtest_output
    assert "Syntax OK" in out
    # The slot count follows the environments, and configtest says so and why.
    assert re.search(r"ServerLimit is 1024, sized for 301 environments and MaxMultiplexers 10", out), out
    assert "peruser: generation 0, 301 environment(s), 3 to 10 multiplexer(s), 1024 slots" \
        in defaults_server.read_error_log()
    # Nothing but the multiplexers runs before a tenant is asked for.
    assert wait_until(lambda: len(defaults_server.children()) == 3)
    names = sorted(tenant_accounts)
    for n in random.Random(15).sample(range(TENANTS), 25):
        status, body, _ = get(defaults_server.port, f"www.t{n:03d}.test", "/cgi-bin/id.cgi")
        assert status == 200, body
        assert f"uid={tenant_accounts[names[n]]} " in body, (n, body)


def test_1000_environments_start_at_the_default_limits(module, accounts):
    """The issue's largest box: 1,000 environments and no limit written. Each runs as a numeric
    uid of its own (`User #N`, as Apache allows), so the box needs no thousand accounts."""
    port = free_port()
    apache = Apache("", name="thousand")
    try:
        apache.write_config(tenants_config(apache.root, port, [f"#{THOUSAND_UIDS + n}" for n in range(1000)]))
        result = apache.configtest()
        out = result.stdout + result.stderr
        assert result.returncode == 0 and "Syntax OK" in out, out
        assert "ServerLimit is 3072, sized for 1001 environments and MaxMultiplexers 10" in out, out
        apache.start(ports=(port,), timeout=60)
        # The port takes connections from Apache's listen(), before the MPM's first line.
        started = "peruser: generation 0, 1001 environment(s), 3 to 10 multiplexer(s), 3072 slots"
        assert wait_until(lambda: started in apache.read_error_log(), timeout=30), apache.read_error_log()[-2000:]
        for n in (0, 1, 500, 998, 999):
            host = f"www.t{n:03d}.test" if n % 2 else f"t{n:03d}.test"
            status, body, _ = get(port, host, "/cgi-bin/id.cgi")
            assert status == 200, body
            assert f"uid={THOUSAND_UIDS + n} " in body and f"server={host} " in body, (n, body)
    finally:
        apache.stop()
        apache.cleanup()


def test_the_status_page_with_300_environments(defaults_server, tenant_accounts):
    for n in (3, 150, 299):
        assert get(defaults_server.port, f"t{n:03d}.test", "/index.html")[0] == 200
    status, page, _ = get(defaults_server.port, "status.test", "/server-status")
    assert status == 200
    table = page.split("<h2>Peruser status</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", table)
    # A row per child and per non-empty group, not one per slot: the quiet tenants share a row.
    assert len(rows) < len(defaults_server.children()) + 10, len(rows)
    quiet = [r for r in rows if "environments with no worker: " in r]
    assert len(quiet) == 1, quiet
    listed = quiet[0].split("environments with no worker: ", 1)[1].split("</td>", 1)[0].split(", ")
    assert not {"t003", "t150", "t299", "admin"} & set(listed)
    assert any("<td>t150</td>" in r for r in rows)
    # ?auto: one line per environment, every line short, no standard key twice.
    status, auto, _ = get(defaults_server.port, "status.test", "/server-status?auto")
    assert status == 200
    lines = auto.splitlines()
    assert max(len(line) for line in lines) < 65536
    envs = [line for line in lines if line.startswith("PeruserEnvironment: ")]
    assert len(envs) == 301
    # The collapsed row names exactly the environments ?auto shows with no worker.
    assert set(listed) == {line.split()[1] for line in envs if " alive=0 " in line}
    assert len(listed) >= 301 - 4 - 25
    t150 = next(line for line in envs if line.startswith("PeruserEnvironment: t150 "))
    assert int(re.search(r"requests=(\d+)", t150).group(1)) >= 1
    keys = Counter(line.split(":", 1)[0] for line in lines if ":" in line and not line.startswith("Peruser"))
    assert keys and all(count == 1 for count in keys.values()), keys
    assert "ServerMPM: peruser" in auto


def test_one_kept_alive_connection_crosses_tenants_each_served_under_its_uid(defaults_server, tenant_accounts):
    """A front proxy's pooled connection asks for tenant after tenant. In each tenant's process
    image the other tenants' vhosts are stubs, consecutive ones written as one vhost with all
    their names: whatever name a worker is asked for, it serves its own and hands back the rest,
    and the environments' indices stay the root's (or the image would refuse to start)."""
    connection = http.client.HTTPConnection("127.0.0.1", defaults_server.port, timeout=30)
    local = None
    for step, n in enumerate([10, 200, 10, 299, 0, 150, 150, 11, 298]):
        host = f"{'www.' if step % 2 else ''}t{n:03d}.test"
        connection.request("GET", "/cgi-bin/id.cgi", headers={"Host": host})
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200, (host, body)
        assert f"uid={tenant_accounts[f'peruser-t{n:03d}']} " in body, (host, body)
        local = local or connection.sock.getsockname()
        assert connection.sock.getsockname() == local, "the connection was not kept alive"
    connection.close()
    errors = [line for line in defaults_server.read_error_log().splitlines()
              if "process image" in line and ("exited" in line or "environments" in line)]
    assert not errors, errors


def test_quiet_environments_give_their_workers_back(module, accounts, tenant_accounts):
    """IdleTimeout 2 (short for the test), MinSpareProcessors at its default 2: 30 tenants
    served get workers and spares, then go back to none."""
    with tenants_server("idle", tenant_accounts, 40, extra="IdleTimeout 2\n", timeout=60) as (apache, port, names):
        for n in range(30):
            assert get(port, f"t{n:03d}.test", "/index.html")[0] == 200
        uids = {tenant_accounts[name] for name in names[:30]}
        assert wait_until(lambda: len(uids & set(workers_by_uid(apache))) >= 25)
        # The spares of the default MinSpareProcessors 2 come up for the tenants served ...
        assert wait_until(lambda: sum(c for uid, c in workers_by_uid(apache).items() if uid in uids) >= 45,
                          timeout=15), workers_by_uid(apache)
        # ... and after IdleTimeout without a request every tenant is back at MinProcessors 0.
        assert wait_until(lambda: not uids & set(workers_by_uid(apache)), timeout=30), workers_by_uid(apache)
        status, page, _ = get(port, "status.test", "/server-status?auto")
        lines = {line.split()[1]: line for line in page.splitlines() if line.startswith("PeruserEnvironment: ")}
        assert all(" alive=0 " in lines[f"t{n:03d}"] for n in range(30)), lines["t000"]
        # A quiet tenant still answers, from a fresh worker.
        status, body, _ = get(port, "t007.test", "/cgi-bin/id.cgi")
        assert status == 200 and f"uid={tenant_accounts[names[7]]} " in body


def child_table_bytes(apache):
    """Bytes of the parent's shared child table (its memfd) in memory: the file's allocated
    blocks, which count every page any process wrote (or read) and nobody gave back."""
    pid = apache.pid()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:peruser-child-table"):
                return os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
        except OSError:
            continue
    raise AssertionError("the parent holds no child table memfd")


def test_the_child_table_gives_back_the_pages_of_workers_gone(module, accounts, tenant_accounts):
    """IdleTimeout 2: 30 tenants served, then quiet. The pages their workers wrote in the shared
    child table (a worker page and a detail page each) are freed once the workers are gone, not
    kept until the next restart (with 300 tenants they were most of a quiet server's memory);
    a tenant asked again gets a worker on a freed page."""
    page = 4096
    with tenants_server("pages", tenant_accounts, 40, extra="IdleTimeout 2\n", timeout=60) as (apache, port, names):
        assert get(port, "status.test", "/index.html")[0] == 200
        time.sleep(1)
        at_start = child_table_bytes(apache)
        for n in range(30):
            assert get(port, f"t{n:03d}.test", "/index.html")[0] == 200
        uids = {tenant_accounts[name] for name in names[:30]}
        assert wait_until(lambda: sum(c for uid, c in workers_by_uid(apache).items() if uid in uids) >= 45,
                          timeout=15), workers_by_uid(apache)
        loaded = child_table_bytes(apache)
        # Each worker wrote its page and its detail page; each environment its own page.
        assert loaded - at_start >= 30 * 3 * page, (at_start, loaded)
        assert wait_until(lambda: not uids & set(workers_by_uid(apache)), timeout=30), workers_by_uid(apache)
        # What stays: the 30 environments' pages (their counters) and a few pages of records.
        assert wait_until(lambda: child_table_bytes(apache) <= at_start + (30 + 8) * page, timeout=5), \
            (at_start, loaded, child_table_bytes(apache))
        status, body, _ = get(port, "t007.test", "/cgi-bin/id.cgi")
        assert status == 200 and f"uid={tenant_accounts[names[7]]} " in body


def test_a_recycled_worker_leaves_its_pools_pages_to_its_replacement(module, accounts, tenant_accounts):
    """MaxConnectionsPerChild 4, MinProcessors 4: one tenant's workers recycle every few
    connections beside the others. The parent punches no page of the child table out at those
    exits: the replacement takes a page of the pool again, and MADV_REMOVE unmaps the range in
    every process that maps the table (1.5 µs per request for one busy tenant on close at the
    defaults, which recycle a worker every 0.7 s). The pages come back when the parent retires
    them (the test above)."""
    extra = "MaxConnectionsPerChild 4\nMinProcessors 4\n"
    with tenants_server("recycled", tenant_accounts, 1, extra=extra, timeout=60) as (apache, port, names):
        trace = os.path.join(apache.root, "parent.strace")
        uid = tenant_accounts[names[0]]
        assert wait_until(lambda: workers_by_uid(apache)[uid] >= 4, timeout=15), workers_by_uid(apache)
        with traced([apache.pid()], "madvise", trace):
            pids = set()
            for _ in range(60):
                assert get(port, "t000.test", "/index.html")[0] == 200
                pids |= {pid for pid, child_uid, _ in apache.children() if child_uid == uid}
                time.sleep(0.02)  # the parent's time to start the replacements (MinProcessors)
            # Three or four connections each: a dozen workers came and went beside the others.
            assert len(pids) >= 8, pids
            time.sleep(0.5)  # the parent reaped the last of them
        with open(trace) as f:
            calls = f.read()
        assert "MADV_REMOVE" not in calls, calls
        assert workers_by_uid(apache)[uid] >= 1


def test_a_worker_that_comes_free_while_a_connection_waits_wakes_a_multiplexer(module, accounts, tenant_accounts):
    """MaxProcessors 1: t000's one worker serves a CGI that sleeps, and a second connection
    waits in the multiplexer (the environment is full). When the worker comes free it says so
    on its hand-back channel (four bytes, "PRUF", no descriptor), and the multiplexer reads it
    there and passes the waiting connection in that turn; before, no worker woke it and it
    looked again after 2 ms (one busy tenant at MaxProcessors 10 with 32 clients left the CPU
    8 % idle). A word from nobody else: with nothing waiting the worker says nothing."""
    extra = "MaxProcessors 1\nMinMultiplexers 1\nMaxMultiplexers 1\n"
    with tenants_server("free", tenant_accounts, 1, extra=extra, timeout=60) as (apache, port, names):
        trace = os.path.join(apache.root, "mux.strace")
        uid = tenant_accounts[names[0]]
        assert get(port, "t000.test", "/index.html")[0] == 200  # its worker, with nobody waiting
        muxes = [pid for pid, child_uid, _ in apache.children() if child_uid == 33]
        assert muxes
        with traced(muxes, "recvmsg", trace):
            assert get(port, "t000.test", "/index.html")[0] == 200
            time.sleep(0.3)
            with open(trace) as f:
                assert "PRUF" not in f.read(), "a worker spoke while nothing waited"
            answers = {}
            slow = threading.Thread(target=lambda: answers.update(slow=get(port, "t000.test", "/cgi-bin/id.cgi?sleep=1")))
            slow.start()
            time.sleep(0.3)  # the worker is in the CGI
            status, body, _ = get(port, "t000.test", "/cgi-bin/id.cgi")
            slow.join()
            assert status == 200 and f"uid={uid} " in body
            assert answers["slow"][0] == 200
            time.sleep(0.3)
        with open(trace) as f:
            calls = f.read()
        assert re.search(r'iov_base="PRUF".*\) = 4$', calls, re.M), calls[-3000:]
        assert "invalid message" not in apache.read_error_log()


SLOW = """<Processor slow>
    User peruser-b
    Group peruser-b
    MaxProcessors 1
</Processor>
"""


def test_a_tenant_asked_once_keeps_its_spares_not_one_more(module, accounts, tenant_accounts):
    """MinSpareProcessors at its default 2: a tenant asked once keeps two idle workers, the
    one that served and a spare started once the shortage lasted a second. A spare started at
    the first request beside the worker it needed left three, and with hundreds of tenants each
    moment of two requests at once left one more (kept for IdleTimeout) until MaxClients."""
    with tenants_server("spares", tenant_accounts, 2) as (apache, port, names):
        uid = tenant_accounts[names[0]]
        assert get(port, "t000.test", "/index.html")[0] == 200
        assert wait_until(lambda: workers_by_uid(apache)[uid] >= 2), workers_by_uid(apache)
        time.sleep(2.5)  # two more seconds of passes: no third worker comes
        assert workers_by_uid(apache)[uid] == 2, workers_by_uid(apache)
        # The tenant nobody asked has none.
        assert workers_by_uid(apache)[tenant_accounts[names[1]]] == 0, workers_by_uid(apache)


def test_a_written_maximum_below_the_default_spares_clamps_them(module, accounts):
    rc, out = configtest(SLOW)
    assert rc == 0, out
    assert "MinSpareProcessors is 1 in <Processor slow>" in out and "not the default 2: MaxProcessors 1 is written" in out


def test_two_written_values_that_disagree_stay_an_error(module, accounts):
    rc, out = configtest("MinSpareProcessors 2\n" + SLOW)
    assert rc != 0
    assert "MinSpareProcessors 2 is above MaxProcessors 1 in <Processor slow>" in out, out


def test_the_clamped_environment_serves(module, accounts):
    port = free_port()
    apache = Apache("", name="clamp")
    root = apache.root
    apache.write_config(f"""Listen 127.0.0.1:{port}
<Directory {root}>
    Require all granted
</Directory>
{SLOW}
<VirtualHost 127.0.0.1:{port}>
    ServerName slow.test
    DocumentRoot {root}
    ServerEnvironment slow
</VirtualHost>
""")
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("slow\n")
    os.chmod(os.path.join(root, "index.html"), 0o644)
    try:
        apache.start(ports=(port,))
        for _ in range(3):
            assert get(port, "slow.test", "/index.html")[0] == 200
        uid = pwd.getpwnam("peruser-b").pw_uid
        time.sleep(1)
        assert workers_by_uid(apache)[uid] == 1, "MaxProcessors 1 holds; no spare beyond it"
    finally:
        apache.stop()
        apache.cleanup()


def test_remembered_routes_still_follow_server_path(module, accounts):
    """Multiplexers remember Apache's vhost answer per address and Host; a request without Host
    is matched by ServerPath (the path takes part), so two such requests with different paths
    must not share an answer."""
    port = free_port()
    apache = Apache("", name="spath")
    root = apache.root
    site = os.path.join(root, "site")
    os.makedirs(os.path.join(site, "cgi-bin"))
    os.makedirs(os.path.join(site, "legacy", "cgi-bin"))
    for directory in (os.path.join(site, "cgi-bin"), os.path.join(site, "legacy", "cgi-bin")):
        cgi = os.path.join(directory, "id.cgi")
        with open(cgi, "w") as f:
            f.write(ID_CGI)
        os.chmod(cgi, 0o755)
    for path in (site, os.path.join(site, "cgi-bin"), os.path.join(site, "legacy"),
                 os.path.join(site, "legacy", "cgi-bin")):
        os.chmod(path, 0o755)
    apache.write_config(f"""Listen 127.0.0.1:{port}
<Directory {site}>
    Require all granted
    Options +ExecCGI
    AddHandler cgi-script .cgi
</Directory>
<Processor first>
    User peruser-a
    Group peruser-a
</Processor>
<Processor legacy>
    User peruser-b
    Group peruser-b
</Processor>
<VirtualHost 127.0.0.1:{port}>
    ServerName first.test
    DocumentRoot {site}
    ServerEnvironment first
</VirtualHost>
<VirtualHost 127.0.0.1:{port}>
    ServerName legacy.test
    ServerPath /legacy
    DocumentRoot {site}
    ServerEnvironment legacy
</VirtualHost>
""")
    try:
        apache.start(ports=(port,))
        uid_a, uid_b = pwd.getpwnam("peruser-a").pw_uid, pwd.getpwnam("peruser-b").pw_uid

        def uid_for(path):
            data = raw_request(port, f"GET {path} HTTP/1.0\r\n\r\n".encode())
            match = re.search(rb"uid=(\d+)", data)
            assert match, data[:300]
            return int(match.group(1))

        for _ in range(3):  # the second and third ask the remembered answers
            assert uid_for("/legacy/cgi-bin/id.cgi") == uid_b
            assert uid_for("/cgi-bin/id.cgi") == uid_a
            assert get(port, "legacy.test", "/cgi-bin/id.cgi")[1].count(f"uid={uid_b} ") == 1
            assert get(port, "first.test", "/cgi-bin/id.cgi")[1].count(f"uid={uid_a} ") == 1
    finally:
        apache.stop()
        apache.cleanup()


def test_at_max_clients_quiet_spares_make_room_for_a_busy_tenant(module, accounts, tenant_accounts):
    """MaxClients 7, one multiplexer, three quiet tenants holding two idle workers each
    (MinSpareProcessors 2; the cap is reached): three slow requests at once to a fourth tenant
    get three workers at once, from the quiet tenants' spares, instead of waiting for each
    other."""
    port = free_port()
    apache = Apache("", name="room")
    names = sorted(tenant_accounts)[:3]
    body = tenants_config(apache.root, port, names, extra="""MaxClients 7
MinMultiplexers 1
MaxMultiplexers 1
MinSpareProcessors 2
ProcessorWaitTimeout 20 10
<Processor busy>
    User peruser-b
    Group peruser-b
    MinSpareProcessors 0
</Processor>
""")
    site = os.path.join(apache.root, "site")
    body += f"""{site_vhost(port, "busy.test", site, "busy")}
"""
    apache.write_config(body)
    try:
        apache.start(ports=(port,))
        quiet = {tenant_accounts[name] for name in names}
        for n in range(3):
            assert get(port, f"t{n:03d}.test", "/index.html")[0] == 200
        # Each quiet tenant: two idle workers (the second a second later: a spare starts once the
        # shortage has lasted); with the multiplexer, 7 children: MaxClients.
        assert wait_until(lambda: sum(c for uid, c in workers_by_uid(apache).items() if uid in quiet) == 6), \
            workers_by_uid(apache)
        busy_uid = pwd.getpwnam("peruser-b").pw_uid
        results = []

        def slow():
            results.append(get(port, "busy.test", "/cgi-bin/id.cgi?sleep=4"))

        threads = [threading.Thread(target=slow) for _ in range(3)]
        for thread in threads:
            thread.start()
            time.sleep(0.2)
        assert wait_until(lambda: workers_by_uid(apache)[busy_uid] == 3, timeout=3.5), workers_by_uid(apache)
        for thread in threads:
            thread.join()
        assert [r[0] for r in results] == [200, 200, 200]
        # The quiet tenants kept a worker each.
        assert all(workers_by_uid(apache)[uid] >= 1 for uid in quiet), workers_by_uid(apache)
    finally:
        apache.stop()
        apache.cleanup()


@pytest.mark.parametrize("ending", ["graceful restart, then stop", "graceful stop"])
def test_a_generation_ends_without_warnings_for_environments_with_no_worker(module, accounts, tenant_accounts,
                                                                            ending):
    """When a generation ends, the parent closes its channels. The hand-back channel of an
    environment with no worker then ends at once, and a multiplexer still running used to warn
    that a sender shut it down (three lines per such environment at every stop, and at a
    graceful restart the parent renewed those channels as broken)."""
    with tenants_server("ending", tenant_accounts, 40, timeout=60) as (apache, port, names):
        for n in range(5):  # five environments with workers, 35 without
            assert get(port, f"t{n:03d}.test", "/index.html")[0] == 200
        pid = apache.pid()
        if ending == "graceful stop":
            os.kill(pid, signal.SIGWINCH)
            assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)
        else:
            os.kill(pid, signal.SIGUSR1)
            assert wait_until(lambda: "peruser: generation 1," in apache.read_error_log(), timeout=30)
            for n in range(5):
                assert get(port, f"t{n:03d}.test", "/index.html")[0] == 200
            time.sleep(1)  # the old generation's workers finish meanwhile
            apache.stop()
        log = apache.read_error_log()
        assert "caught SIG" in log, log[-2000:]
        complaints = [line for line in log.splitlines() if re.search(r":(warn|error|crit|alert|emerg)\]", line)]
        assert not complaints, "\n".join(complaints[:6])
