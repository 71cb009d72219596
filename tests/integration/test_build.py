"""The module as built: one exported symbol, no Swift shared library, and guards that work."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from harness import REPO

CHECK = os.path.join(REPO, "apxs", "check-symbols.sh")
BOUNDARY = os.path.join(REPO, "apxs", "check-boundary.py")
HEADER = os.path.join(REPO, "CShim", "peruser_swift.h")
SWIFT = shutil.which("swift") or "/opt/swift/usr/bin/swift"


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


# ---- apxs/check-boundary.py: CShim/peruser_swift.h against the @_cdecl functions ----

@pytest.fixture(scope="session")
def swift_build():
    """The Swift release build the boundary check reads (no apxs link needed)."""
    subprocess.run(["make", "-C", REPO, ".build/release/libPeruserSwift.a"], check=True)


def check_boundary(*args):
    return subprocess.run([sys.executable, BOUNDARY, "--swift", SWIFT, *args], cwd=REPO,
                          capture_output=True, text=True)


def prototypes(text):
    """(name, parameters, span) of each one-prototype-per-statement function declaration of a
    header, parameters split at commas; enough to pick a function to break."""
    found = []
    for m in re.finditer(r"^[A-Za-z_][\w \t*]*?\b(\w+)\s*\(([^;()]*)\)\s*;", text, re.M):
        params = [p.strip() for p in m.group(2).split(",")]
        found.append((m.group(1), [] if params == ["void"] else params, m.span()))
    assert found, "no prototype found in the header"
    return found


def broken_header(tmp_path, edit):
    """A copy of the real header with one function's prototype changed by `edit`
    (parameters -> parameters, or None to delete it); returns the copy and the function."""
    text = open(HEADER).read()
    name, params, (start, end) = next(p for p in prototypes(text) if p[1])
    prototype = text[start:end]
    changed = edit(params)
    if changed is None:
        replacement = ""
    else:
        head = prototype[:prototype.index("(")]
        replacement = f"{head}({', '.join(changed)});"
    copy = tmp_path / "peruser_swift.h"
    copy.write_text(text[:start] + replacement + text[end:])
    return str(copy), name


def test_boundary_check_passes_on_the_tree(swift_build):
    result = check_boundary(HEADER)
    assert result.returncode == 0, result.stderr
    assert "match the @_cdecl functions" in result.stdout


def test_boundary_check_rejects_a_changed_parameter_type(swift_build, tmp_path):
    # double is no type any entry point takes: the first parameter's type surely changes.
    header, name = broken_header(tmp_path, lambda params: ["double changed"] + params[1:])
    result = check_boundary(header)
    assert result.returncode == 1
    assert f"{name}: the header's prototype and the @_cdecl function disagree" in result.stderr
    assert "(Double" in result.stderr, result.stderr


def test_boundary_check_rejects_an_extra_parameter(swift_build, tmp_path):
    header, name = broken_header(tmp_path, lambda params: params + ["int extra"])
    result = check_boundary(header)
    assert result.returncode == 1
    assert f"{name}: the header's prototype and the @_cdecl function disagree" in result.stderr
    assert "parameter(s) in the header" in result.stderr, result.stderr


def test_boundary_check_rejects_a_function_missing_from_the_header(swift_build, tmp_path):
    header, name = broken_header(tmp_path, lambda params: None)
    result = check_boundary(header)
    assert result.returncode == 1
    assert f"{name}: @_cdecl function" in result.stderr and "is not declared in" in result.stderr


def test_boundary_check_rejects_a_function_swift_does_not_define(swift_build, tmp_path):
    text = open(HEADER).read()
    end = text.rindex("#endif")
    copy = tmp_path / "peruser_swift.h"
    copy.write_text(text[:end] + "int peruser_boundary_test_only(int value);\n" + text[end:])
    result = check_boundary(str(copy))
    assert result.returncode == 1
    assert "peruser_boundary_test_only: declared in" in result.stderr
    assert "no @_cdecl function of PeruserModule defines it" in result.stderr


def test_boundary_check_rejects_an_unprototyped_declaration(swift_build, tmp_path):
    # `int f();` declares no parameters to C: calls to it would go unchecked.
    header, _ = broken_header(tmp_path, lambda params: [])
    text = open(header).read()
    assert "();" in text
    result = check_boundary(header)
    assert result.returncode == 1 and "strict-prototypes" in result.stderr


def test_boundary_check_compares_exact_types(tmp_path):
    """A module of our own, changed on the Swift side: the check compares what the Swift
    compiler imports from the header (size_t is Int, long long is Int64, unsigned is UInt32),
    exactly, nullability included."""
    (tmp_path / "Fixture.swift").write_text('''
@_cdecl("fixture_same")
public func same(_ a: Int32, _ n: Int, _ t: Int64, _ u: UInt32, _ s: UnsafePointer<CChar>?,
                 _ l: UnsafePointer<UnsafePointer<CChar>?>?, _ o: UnsafeMutablePointer<Int>?) -> Int { 0 }
@_cdecl("fixture_signedness")
public func signedness(_ u: Int32) {}
@_cdecl("fixture_constness")
public func constness(_ p: UnsafeMutableRawPointer?) {}
@_cdecl("fixture_nullability")
public func nullability(_ p: UnsafeMutablePointer<Int32>) {}
@_cdecl("fixture_result")
public func result() -> Int32 { 0 }
@_cdecl("fixture_internal")
func hidden() {}
''')
    (tmp_path / "fixture.h").write_text("""#include <stddef.h>
long fixture_same(int a, size_t n, long long t, unsigned u, const char *s, const char *const *l,
                  size_t *o);
void fixture_signedness(unsigned u);
void fixture_constness(const void *p);
void fixture_nullability(int *p);
long fixture_result(void);
void fixture_internal(void);
""")
    swiftc = os.path.join(os.path.dirname(os.path.realpath(SWIFT)), "swiftc")
    subprocess.run([swiftc, "-parse-as-library", "-emit-module", "-module-name", "BoundaryFixture",
                    "-emit-module-path", str(tmp_path / "BoundaryFixture.swiftmodule"),
                    str(tmp_path / "Fixture.swift")], check=True)
    result = check_boundary("--modules", str(tmp_path), "--module", "BoundaryFixture",
                            str(tmp_path / "fixture.h"))
    assert result.returncode == 1
    disagree = set(re.findall(r"(fixture_\w+): the header's prototype and the @_cdecl function disagree",
                              result.stderr))
    assert disagree == {"fixture_signedness", "fixture_constness", "fixture_nullability",
                        "fixture_result"}, result.stderr
    assert "fixture_internal: @_cdecl function hidden() at" in result.stderr
    assert "is internal; make it public" in result.stderr
