"""Configuration errors are caught by `apache2 -t` and name the directive, the place and the problem."""
import re

import pytest

from harness import Apache, free_port


def configtest(body):
    apache = Apache(body, name="cfg")
    try:
        apache.write_config(f"Listen 127.0.0.1:{free_port()}\n" + body)
        result = apache.configtest()
        return result.returncode, result.stdout + result.stderr
    finally:
        apache.cleanup()


GOOD_ENV = """<Processor good>
    User peruser-a
    Group peruser-a
</Processor>
"""


def test_valid_configuration_passes(module, accounts):
    rc, out = configtest(GOOD_ENV + "<VirtualHost *:80>\n ServerName x\n ServerEnvironment good\n</VirtualHost>\n")
    assert rc == 0, out
    assert "Syntax OK" in out


def test_every_limit_of_the_spec_is_accepted(module, accounts):
    limits = """ServerLimit 256
MaxClients 256
MinProcessors 0
MaxProcessors 10
MinSpareProcessors 2
MaxSpareProcessors 0
MinMultiplexers 3
MaxMultiplexers 10
MultiplexerIdleTimeout 0
MaxRequestsPerChild 1000
MaxConnectionsPerChild 1000
ExpireTimeout 1800
IdleTimeout 900
ProcessorWaitTimeout 5 10
<Processor limited>
    User peruser-b
    Group peruser-b
    MinProcessors 1
    MaxProcessors 4
    MinSpareProcessors 1
    MaxSpareProcessors 2
</Processor>
"""
    rc, out = configtest(limits + GOOD_ENV)
    assert rc == 0, out


@pytest.mark.parametrize("body,needle", [
    # unknown environment, and one used before it is declared
    ("<VirtualHost *:80>\n ServerEnvironment nosuch\n</VirtualHost>\n",
     r"line \d+ of .*\s+ServerEnvironment nosuch: no <Processor nosuch> is declared"),
    ("<VirtualHost *:80>\n ServerEnvironment good\n</VirtualHost>\n" + GOOD_ENV,
     r"ServerEnvironment good: no <Processor good> is declared before this line"),
    # wrong places
    (GOOD_ENV + "ServerEnvironment good\nServerEnvironment good\n",
     r"ServerEnvironment is given twice for the main server"),
    (GOOD_ENV + "<VirtualHost *:80>\n<Directory /tmp>\nServerEnvironment good\n</Directory>\n</VirtualHost>\n",
     r"ServerEnvironment not allowed in <Directory> context"),
    ("<VirtualHost *:80>\n<Processor inner>\nUser peruser-a\nGroup peruser-a\n</Processor>\n</VirtualHost>\n",
     r"<Processor> cannot occur within <VirtualHost> section"),
    (GOOD_ENV + "<VirtualHost *:80>\n ServerEnvironment good\n ServerEnvironment good\n</VirtualHost>\n",
     r"ServerEnvironment is given twice"),
    # process images
    ("ProcessorImage maybe\n", r"ProcessorImage must be isolated or shared, not maybe"),
    ("ProcessorImage\n", r"ProcessorImage takes 1-2 arguments"),
    ("<Processor p>\n User peruser-a\n Group peruser-a\n ProcessorImage private\n</Processor>\n",
     r"ProcessorImage must be isolated or shared, not private"),
    # missing and wrong accounts
    ("<Processor p>\n Group peruser-a\n</Processor>\n", r"<Processor p> \(line \d+ of \S+\): <Processor p> has no User directive"),
    ("<Processor p>\n User peruser-a\n</Processor>\n", r"<Processor p> has no Group directive"),
    ("<Processor p>\n User no-such-user-xyz\n Group peruser-a\n</Processor>\n",
     r"<Processor \S+> \(line \d+ of \S+\): User 'no-such-user-xyz' does not exist on this system"),
    ("<Processor p>\n User peruser-a\n Group no-such-group-xyz\n</Processor>\n",
     r"Group 'no-such-group-xyz' does not exist"),
    ("<Processor p>\n User root\n Group peruser-a\n</Processor>\n", r"User 'root' is root \(uid 0\)"),
    ("<Processor p>\n User peruser-a\n Group root\n</Processor>\n", r"Group 'root' is root \(gid 0\)"),
    ("<Processor p>\n User #0\n Group peruser-a\n</Processor>\n", r"User '#0' is root"),
    # stray and unknown directives, bad numbers, duplicates
    ("<Processor p>\n User peruser-a\n Group peruser-a\n DocumentRoot /tmp\n</Processor>\n",
     r"DocumentRoot is not allowed inside <Processor p> \(line \d+ of"),
    ("<Processor p>\n User peruser-a\n User peruser-b\n Group peruser-a\n</Processor>\n", r"User is given twice"),
    (GOOD_ENV + GOOD_ENV, r"<Processor good> is declared twice"),
    ("<Processor>\n User peruser-a\n Group peruser-a\n</Processor>\n", r"<Processor> takes exactly one name"),
    ("<Processor a b>\n User peruser-a\n Group peruser-a\n</Processor>\n", r"<Processor> takes exactly one name"),
    ("MinMultiplexers zero\n", r"MinMultiplexers takes a whole number, not 'zero'"),
    ("MinProcessors -1\n", r"MinProcessors -1 is out of range"),
    ("ServerLimit 0\n", r"ServerLimit 0 is out of range"),
    ("ServerLimit 2\nMinMultiplexers 2\n" + GOOD_ENV,
     r"1 <Processor> environments \(one reserved slot each\) and MinMultiplexers 2 need more than ServerLimit 2"),
    ("ServerLimit 10\nMaxClients 20\n", r"MaxClients 20 is above ServerLimit 10"),
    ("ServerLimit 256\nMaxRequestWorkers 300\n", r"MaxClients 300 is above ServerLimit 256"),
    ("MinMultiplexers 5\nMaxMultiplexers 4\n", r"MinMultiplexers 5 is above MaxMultiplexers 4 \(global\)"),
    ("MinProcessors 11\n", r"MinProcessors 11 is above MaxProcessors 10 \(global\)"),
    ("MinSpareProcessors 5\nMaxSpareProcessors 3\n", r"MinSpareProcessors 5 is above MaxSpareProcessors 3"),
    ("MaxProcessors 0\n", r"MaxProcessors 0 is out of range"),
    ("IdleTimeout -5\n", r"IdleTimeout -5 is out of range"),
    ("ExpireTimeout soon\n", r"ExpireTimeout takes a whole number, not 'soon'"),
    ("ProcessorWaitTimeout 5 0\n", r"ProcessorWaitTimeout levels 0 is out of range"),
    ("MaxClientShare 0\n", r"MaxClientShare 0 is out of range"),
    ("MaxClientShare 101\n", r"MaxClientShare 101 is out of range"),
    ("MaxClientShare half\n", r"MaxClientShare takes a whole number, not 'half'"),
    ("ReaderShedTimeout -1\n", r"ReaderShedTimeout -1 is out of range"),
    ("<VirtualHost *:80>\n ReaderShedTimeout 3\n</VirtualHost>\n", r"ReaderShedTimeout cannot occur within <VirtualHost>"),
    ("<Processor p>\n User peruser-a\n Group peruser-a\n MinProcessors 4\n MaxProcessors 3\n</Processor>\n",
     r"MinProcessors 4 is above MaxProcessors 3 in <Processor p>"),
    ("<Processor p>\n User peruser-a\n Group peruser-a\n MaxSpareProcessors x\n</Processor>\n",
     r"MaxSpareProcessors takes a whole number, not 'x' \(line \d+ of"),
    ("MaxClients 3\nMinMultiplexers 2\n<Processor p>\n User peruser-a\n Group peruser-a\n MinProcessors 2\n</Processor>\n",
     r"come to 4 children, above MaxClients 3"),
    ("<VirtualHost *:80>\n MinProcessors 3\n</VirtualHost>\n", r"MinProcessors cannot occur within <VirtualHost> section"),
    ("<VirtualHost *:80>\n<Processor x>\n</Processor>\n</VirtualHost>\n", r"cannot occur within <VirtualHost>"),
])
def test_configuration_errors_name_the_problem(module, accounts, body, needle):
    rc, out = configtest(body)
    assert rc != 0, f"configtest accepted:\n{body}\n{out}"
    assert re.search(needle, out), out


def test_vhost_without_environment_is_warned_about_at_startup(module, accounts):
    rc, out = configtest(GOOD_ENV + "<VirtualHost *:80>\n ServerName lonely.test\n</VirtualHost>\n")
    assert rc == 0, out
    assert re.search(r"virtual host lonely.test \(<VirtualHost \*:80> on line \d+ of \S+\) has no ServerEnvironment", out), out
