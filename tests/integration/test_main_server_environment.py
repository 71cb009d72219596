"""`ServerEnvironment` in the server config: the main server's requests run in that environment,
and every vhost that names none inherits it (Apache's usual merge, wherever in the file the
directive stands); a vhost with its own keeps it; with no environment from either place a vhost
still gets 503."""
import pytest

from conftest import make_site, site_vhost, two_environments
from harness import Apache, free_port, serving
from test_end_to_end import get, ids_of


def start(accounts, global_line):
    vhost_port, main_port = free_port(), free_port()
    apache = Apache("", name="mainenv")
    a_site = make_site(apache.root, *accounts["peruser-a"], "a")
    b_site = make_site(apache.root, *accounts["peruser-b"], "b")
    apache.write_config(f"""Listen 127.0.0.1:{vhost_port}
Listen 127.0.0.1:{main_port}
MinMultiplexers 1
MinSpareProcessors 0
{two_environments(apache.root)}
DocumentRoot {a_site}
ScriptAlias /cgi-bin/ {a_site}/cgi-bin/
{site_vhost(vhost_port, "b.test", b_site, "env-b")}
<VirtualHost 127.0.0.1:{vhost_port}>
    ServerName plain.test
    DocumentRoot {a_site}
    ScriptAlias /cgi-bin/ {a_site}/cgi-bin/
</VirtualHost>
{global_line}
""")
    apache.vhost_port, apache.main_port = vhost_port, main_port
    apache.start(ports=(vhost_port, main_port))
    return apache


@pytest.fixture(scope="module")
def global_env(module, accounts):
    # After the vhosts on purpose: Apache merges the main server into vhosts after reading all.
    apache = start(accounts, "ServerEnvironment env-a")
    yield from serving(apache)


def test_the_main_server_runs_in_its_environment(global_env, accounts):
    status, body, _ = get(global_env.main_port, "whatever.test")
    assert status == 200 and ids_of(body)[:2] == accounts["peruser-a"], body


def test_a_vhost_without_environment_inherits_the_main_servers(global_env, accounts):
    status, body, _ = get(global_env.vhost_port, "plain.test")
    assert status == 200 and ids_of(body)[:2] == accounts["peruser-a"], body


def test_a_vhost_with_its_own_environment_keeps_it(global_env, accounts):
    status, body, _ = get(global_env.vhost_port, "b.test")
    assert status == 200 and ids_of(body)[:2] == accounts["peruser-b"], body


def test_without_a_global_environment_such_vhosts_get_503(module, accounts):
    apache = start(accounts, "")
    try:
        assert get(apache.vhost_port, "plain.test")[0] == 503
        assert get(apache.main_port, "whatever.test")[0] == 503
        status, body, _ = get(apache.vhost_port, "b.test")
        assert status == 200 and ids_of(body)[:2] == accounts["peruser-b"]
    finally:
        apache.stop()
        apache.cleanup()


def test_a_global_environment_as_the_multiplexers_user_is_refused(module, accounts):
    from test_config import configtest
    rc, out = configtest("<Processor web>\n    User www-data\n    Group www-data\n</Processor>\nServerEnvironment web\n")
    assert rc != 0 and "<Processor web>" in out and "MultiplexerUser" in out, out
