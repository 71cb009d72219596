"""No tenant shares the multiplexers' identity: an environment (declared, or mpm-itk's
AssignUserID) running as the multiplexers' User or Group is refused at configtest with both
directives and their lines; MultiplexerUser/MultiplexerGroup give such sites a way to keep
working; multiplexers stay non-dumpable even with CoreDumpDirectory."""
import os
import urllib.request

import pytest

from conftest import make_site
from harness import Apache, ensure_account, free_port
from test_config import configtest

MUX = "peruser-mux"


@pytest.fixture(scope="module")
def mux_account():
    return ensure_account(MUX)


def test_a_processor_running_as_the_multiplexers_user_is_refused(module, accounts):
    rc, out = configtest("<Processor web>\n    User www-data\n    Group peruser-a\n</Processor>\n")
    assert rc != 0, out
    assert "<Processor web> (line" in out and "User www-data (line" in out, out
    assert "MultiplexerUser" in out, out


def test_a_processor_in_the_multiplexers_group_is_refused(module, accounts):
    rc, out = configtest("<Processor web>\n    User peruser-a\n    Group www-data\n</Processor>\n")
    assert rc != 0, out
    assert "<Processor web>" in out and "gid 33" in out and "Group (line" in out, out


def test_assign_user_id_www_data_is_refused_with_its_line(module, accounts):
    rc, out = configtest("<VirtualHost *:80>\n    ServerName d\n    AssignUserID www-data www-data\n</VirtualHost>\n")
    assert rc != 0, out
    assert "AssignUserID www-data www-data (line" in out, out


def test_multiplexer_user_of_their_own_lets_www_data_be_a_tenant(module, accounts, mux_account):
    body = (f"MultiplexerUser {MUX}\nMultiplexerGroup {MUX}\n"
            "<VirtualHost *:80>\n    ServerName d\n    AssignUserID www-data www-data\n</VirtualHost>\n")
    rc, out = configtest(body)
    assert rc == 0, out
    rc, out = configtest(f"MultiplexerUser {MUX}\nMultiplexerGroup {MUX}\n"
                         f"<Processor m>\n    User {MUX}\n    Group peruser-a\n</Processor>\n")
    assert rc != 0 and f"MultiplexerUser {MUX} (line" in out, out


def test_unknown_multiplexer_user_is_named(module):
    rc, out = configtest("MultiplexerUser no-such-user-here\n")
    assert rc != 0 and "MultiplexerUser no-such-user-here: no such user" in out, out


def test_two_environments_with_one_uid_start_with_a_warning(module, accounts):
    rc, out = configtest("<Processor one>\n    User peruser-a\n    Group peruser-a\n</Processor>\n"
                         "<Processor two>\n    User peruser-a\n    Group peruser-b\n</Processor>\n")
    assert rc == 0, out
    assert "environments one and two both run as uid" in out and "one trust domain" in out, out


def proc_owner(pid):
    """Owner of /proc/PID/status: root for a non-dumpable process, its uid otherwise."""
    return os.stat(f"/proc/{pid}/status").st_uid


def test_www_data_tenant_served_and_multiplexers_not_dumpable(module, accounts, mux_account):
    """The itk habit, `AssignUserID www-data www-data` for a default site, works with the
    multiplexers under their own account; CoreDumpDirectory does not make them dumpable."""
    apache = Apache("", name="ids")
    port = free_port()
    site = make_site(apache.root, 33, 33, "d")
    try:
        apache.write_config(f"""Listen 127.0.0.1:{port}
MultiplexerUser {MUX}
MultiplexerGroup {MUX}
MinMultiplexers 1
MinProcessors 1
MinSpareProcessors 0
CoreDumpDirectory {apache.root}
<Directory {apache.root}>
    Require all granted
    Options +ExecCGI
</Directory>
<VirtualHost 127.0.0.1:{port}>
    ServerName d.test
    DocumentRoot {site}
    ScriptAlias /cgi-bin/ {site}/cgi-bin/
    AssignUserID www-data www-data
</VirtualHost>
""")
        apache.start(ports=(port,))
        kids = apache.wait_children(2)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/cgi-bin/id.cgi", timeout=10).read().decode()
        assert "uid=33 " in body, body
        mux_uid = mux_account[0]
        muxes = [pid for pid, uid, _ in kids if uid == mux_uid]
        assert muxes, f"no multiplexer runs as {MUX}: {kids}"
        for pid in muxes:
            assert proc_owner(pid) == 0, f"multiplexer {pid} is dumpable (its /proc entries belong to its uid)"
    finally:
        apache.stop()
        apache.cleanup()
