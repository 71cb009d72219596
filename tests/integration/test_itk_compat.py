"""mpm-itk's configuration moves over by swapping the module: AssignUserID per vhost makes an
implicit environment per user/group pair; what cannot carry over is refused with a reason."""
import re

import pytest

from conftest import make_site
from harness import Apache, free_port, serving
from test_end_to_end import get, ids_of

CGI = "/cgi-bin/id.cgi"


@pytest.fixture(scope="module")
def itk(module, accounts):
    port = free_port()
    apache = Apache("")
    a, b = accounts["peruser-a"], accounts["peruser-b"]
    sites = {name: make_site(apache.root, *ids, name) for name, ids in (("a", a), ("a2", a), ("b", b))}
    vhosts = "".join(f"""<VirtualHost 127.0.0.1:{port}>
    ServerName {name}.test
    DocumentRoot {sites[name]}
    ScriptAlias /cgi-bin/ {sites[name]}/cgi-bin/
    AssignUserID {user} {user}
</VirtualHost>
""" for name, user in (("a", "peruser-a"), ("a2", "peruser-a"), ("b", "peruser-b")))
    apache.write_config(f"""
Listen 127.0.0.1:{port}
MinMultiplexers 1
MinSpareProcessors 0
LimitUIDRange 1000 2000
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
<Location /server-status>
    SetHandler server-status
</Location>
<Directory {apache.root}>
    Require all granted
    Options +ExecCGI
</Directory>
{vhosts}""")
    apache.port, apache.ids = port, {"a": a, "a2": a, "b": b}
    apache.start(ports=(port,))
    yield from serving(apache)


@pytest.mark.parametrize("site", ["a", "a2", "b"])
def test_assign_user_id_serves_each_vhost_as_its_user(itk, site):
    status, body, _ = get(itk.port, f"{site}.test", CGI)
    assert status == 200, body
    assert ids_of(body)[:2] == itk.ids[site]


def test_one_implicit_environment_per_user_and_group(itk):
    status, body, _ = get(itk.port, "b.test", "/server-status?auto")
    assert status == 200
    names = re.findall(r"PeruserEnvironment: (\S+)", body)
    assert sorted(names) == ["assign-peruser-a-peruser-a", "assign-peruser-b-peruser-b"], body


def test_limit_uid_range_is_accepted_with_a_notice(accounts):
    apache = Apache("LimitUIDRange 1000 2000\n")
    apache.write_config()
    result = apache.configtest()
    apache.cleanup()
    assert result.returncode == 0
    assert re.search(r"LimitUIDRange \(line \d+ of \S+\) has no effect: workers never change their uid",
                     result.stdout + result.stderr)


@pytest.mark.parametrize("body,needle", [
    ("AssignUserID peruser-a peruser-a\nAssignUserID peruser-b peruser-b\n",
     r"AssignUserID and ServerEnvironment \(or a second AssignUserID\) are both given"),
    ("<Processor p>\n User peruser-a\n Group peruser-a\n</Processor>\n<VirtualHost *:80>\n ServerEnvironment p\n"
     " AssignUserID peruser-a peruser-a\n</VirtualHost>\n", r"AssignUserID and ServerEnvironment .* are both given"),
    ("<VirtualHost *:80>\n AssignUserID no-such-user-xyz peruser-a\n</VirtualHost>\n",
     r"AssignUserID no-such-user-xyz peruser-a: User 'no-such-user-xyz' does not exist"),
    ("<VirtualHost *:80>\n AssignUserID root root\n</VirtualHost>\n", r"User 'root' is root"),
    ("<VirtualHost *:80>\n AssignUserIDExpr %{reqenv:owner}\n</VirtualHost>\n",
     r"AssignUserIDExpr \(mpm-itk\) is not supported by peruser: identities chosen per request"),
    ("<VirtualHost *:80>\n MaxClientsVHost 20\n</VirtualHost>\n",
     r"MaxClientsVHost \(mpm-itk\) is not supported by peruser: limit workers per environment with MaxProcessors"),
    ("<VirtualHost *:80>\n NiceValue 5\n</VirtualHost>\n", r"NiceValue belongs inside <Processor>"),
])
def test_what_does_not_carry_over_is_refused_with_the_alternative(accounts, body, needle):
    apache = Apache(body)
    apache.write_config()
    result = apache.configtest()
    apache.cleanup()
    assert result.returncode != 0
    assert re.search(needle, result.stdout + result.stderr), result.stdout + result.stderr
