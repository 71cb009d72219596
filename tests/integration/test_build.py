"""The module as built: one exported symbol, no Swift shared library, and a guard that works."""
import os
import re
import subprocess

from harness import MODULE, REPO

CHECK = os.path.join(REPO, "apxs", "check-symbols.sh")


def test_module_exports_only_the_module_struct(module):
    out = subprocess.run(["nm", "-D", "--defined-only", module], capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if re.search(r" [TDBRVW] ", line)}
    assert exported == {"mpm_peruser_module"}


def test_module_needs_no_swift_library(module):
    out = subprocess.run(["ldd", module], capture_output=True, text=True).stdout
    assert "libswift" not in out and "Foundation" not in out, out
    assert subprocess.run(["sh", CHECK, module]).returncode == 0


def build_fake_module(tmp_path, body):
    src = tmp_path / "fake.c"
    src.write_text(body)
    so = tmp_path / "fake.so"
    script = tmp_path / "map"
    script.write_text("{ global: mpm_peruser_module; local: *; };\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src), f"-Wl,--version-script={script}"],
                   check=True)
    return str(so)


def test_symbol_check_rejects_a_foreign_undefined_symbol(tmp_path):
    so = build_fake_module(tmp_path, "extern void swift_retain_missing(void *);\n"
                                     "void *mpm_peruser_module = 0;\n"
                                     "void f(void) { swift_retain_missing(0); }\n")
    result = subprocess.run(["sh", CHECK, so], capture_output=True, text=True)
    assert result.returncode != 0
    assert "swift_retain_missing" in result.stderr


def test_symbol_check_rejects_extra_exports(tmp_path):
    src = tmp_path / "extra.c"
    src.write_text("int mpm_peruser_module; int leaked_helper(void) { return 1; }\n")
    so = tmp_path / "extra.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    result = subprocess.run(["sh", CHECK, str(so)], capture_output=True, text=True)
    assert result.returncode != 0 and "leaked_helper" in result.stderr
