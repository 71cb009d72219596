#!/usr/bin/env python3
"""Fails when the C header of the Swift entry points (CShim/peruser_swift.h) and the @_cdecl
functions of the Swift module disagree: a function on one side only, or a prototype whose types
(parameter count, parameter types, return type) differ from the Swift definition's.

Nothing is hard-coded and nothing is parsed by hand; the compilers read both sides:
  - the header's functions come from clang's AST of the header (only those declared in it);
  - the @_cdecl functions, with their C names, come from the symbol graph of the built Swift
    module (.build/release/Modules, so run this after `swift build`);
  - each pair is compared by the Swift compiler: the header is imported as a Clang module, so each
    prototype gets the Swift type the importer gives it (size_t is Int, long long is Int64,
    unsigned is UInt32, const char * is UnsafePointer<CChar>?, ...), and
    `exact(type(of: Header.c_name), type(of: Module.swiftName(_:_:)))` must type-check. Metatypes
    have no implicit conversions, so the two function types must be identical.

Not `swiftc -emit-clang-header-path` plus one C file that includes both headers: Swift 6.3 on
Linux prints @_cdecl functions only under `#if defined(__OBJC__)` (Int as NSInteger), and even
extracted, C calls correct pairs conflicting types: size_t (unsigned long) against Int (long),
long long against Int64 (int64_t is long), though the ABI is the same. Swift's importer maps C
types exactly as Swift itself does when it calls C.

    check-boundary.py [--swift SWIFT] [--modules DIR] [--module NAME] [-I DIR]... HEADER...

Needs the Swift toolchain only (swiftc, swift-symbolgraph-extract, its clang); no root, no Apache.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER_MODULE = "PeruserBoundaryHeaders"


def fail_tool(what, result):
    output = result.stderr if result.stderr.strip() else result.stdout[-4000:]
    sys.stderr.write(f"check-boundary: {what} failed:\n{output}")
    sys.exit(1)


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True)


def relative(path):
    path = os.path.abspath(path)
    return os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path


# ---- The header side: clang's AST ----

def header_functions(clang, header, includes=()):
    """{name: (line, C type, parameter count)} of the functions declared in `header` itself (not in
    what it includes). Unprototyped declarations (`int f();`) are an error: C does not check
    calls against them, so their parameters could not be checked either."""
    argv = [clang, "-x", "c", "-std=gnu99", "-fsyntax-only", "-Werror=strict-prototypes"]
    for d in includes:
        argv += ["-I", d]
    result = run(argv + ["-Xclang", "-ast-dump=json", header])
    if result.returncode != 0:
        fail_tool(f"clang on {header}", result)
    tree = json.loads(result.stdout)
    target = os.path.realpath(header)
    # The JSON dump writes a location's "file" and "line" only when they change from the location
    # written before it (in document order), so both are tracked through the whole tree.
    state = {"file": None, "line": None}

    def visit(node):
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            if "offset" in node:  # a bare source location
                state["file"] = node.get("file", state["file"])
                state["line"] = node.get("line", state["line"])
            for key, value in node.items():
                if key != "includedFrom":  # where the file was included from: not a location
                    visit(value)

    found = {}
    for decl in tree.get("inner", []):
        visit(decl.get("loc", {}))
        where_file, where_line = state["file"], state["line"]
        visit({k: v for k, v in decl.items() if k != "loc"})
        if decl.get("kind") != "FunctionDecl" or decl.get("isImplicit") or not decl.get("loc"):
            continue
        if where_file is None or os.path.realpath(where_file) != target:
            continue
        params = sum(1 for d in decl.get("inner", []) if d.get("kind") == "ParmVarDecl")
        found.setdefault(decl["name"], (where_line, decl["type"]["qualType"], params))
    return found


# ---- The Swift side: the module's symbol graph ----

# Flags for the Clang importer (-Xcc), for modules the Swift module imports (Apache's headers).
CLANG_FLAGS = []

def package_clang_flags():
    """The Clang importer flags Package.swift gives the module (`let apacheHeaders = [...]`), so
    that the two cannot disagree."""
    try:
        with open(os.path.join(REPO, "Package.swift")) as f:
            found = re.search(r"let apacheHeaders = \[([^\]]*)\]", f.read())
    except OSError:
        return []
    return re.findall(r'"([^"]+)"', found.group(1)) if found else []


CDECL = re.compile(r'(?:^|\s)@_cdecl\("([^"]*)"\)|(?:^|\s)@c(?:\((\w+)\))?(?=\s)')


def cdecl_functions(extract, module, search, cache, target):
    """{C name: [symbol]} of the @_cdecl (or @c) functions of `module`, with Swift name, access
    level, location and declaration."""
    with tempfile.TemporaryDirectory() as out:
        argv = [extract, "-module-name", module, "-target", target, "-output-dir", out,
                "-minimum-access-level", "private", "-module-cache-path", cache]
        for d in search:
            argv += ["-I", d]
        for flag in CLANG_FLAGS:
            argv += ["-Xcc", flag]
        result = run(argv)
        if result.returncode != 0:
            fail_tool(f"swift-symbolgraph-extract of {module} (was `swift build` run?)", result)
        with open(os.path.join(out, f"{module}.symbols.json")) as f:
            graph = json.load(f)
    found = {}
    for symbol in graph["symbols"]:
        fragments = symbol.get("declarationFragments", [])
        # Attributes come before the declaration's first keyword (func).
        attributes = ""
        for fragment in fragments:
            if fragment["kind"] == "keyword":
                break
            attributes += fragment["spelling"]
        match = CDECL.search(attributes)
        if not match:
            continue
        title = symbol["pathComponents"][-1]  # e.g. peruserTableSize(_:_:)
        base = title.split("(")[0]
        name = match.group(1) or match.group(2) or base
        location = symbol.get("location")
        where = "(no source location)"
        if location:
            path = location["uri"].removeprefix("file://")
            where = f"{relative(path)}:{location['position']['line'] + 1}"
        labels = title[len(base):]
        found.setdefault(name, []).append({
            "title": title,
            "path": ".".join(symbol["pathComponents"][:-1] + [base if labels == "()" else title]),
            "access": symbol.get("accessLevel", "?"),
            "where": where,
            "declaration": "".join(f["spelling"] for f in fragments),
            "params": labels.count(":"),
        })
    return found


# ---- The comparison: the Swift compiler ----

def compare_types(swiftc, pairs, headers, module, search, cache, work):
    """Type-checks one `exact(...)` line per pair; {C name: diagnostic} of those that disagree,
    and the diagnostics no pair explains (an import error, for instance)."""
    with open(os.path.join(work, "module.modulemap"), "w") as f:
        f.write(f"module {HEADER_MODULE} {{\n")
        for header in headers:
            f.write(f'    header "{os.path.abspath(header)}"\n')
        f.write("    export *\n}\n")
    source = os.path.join(work, "Boundary.swift")
    lines = [f"import {HEADER_MODULE}", f"import {module}",
             "func exact<T>(_ header: T.Type, _ definition: T.Type) {}"]
    line_of = {}
    for name, path in sorted(pairs.items()):
        lines.append(f"exact(type(of: {HEADER_MODULE}.{name}), type(of: {module}.{path}))")
        line_of[len(lines)] = name
    with open(source, "w") as f:
        f.write("\n".join(lines) + "\n")
    argv = [swiftc, "-typecheck", "-diagnostic-style", "llvm", "-module-cache-path", cache,
            "-I", work, source]
    for d in search:
        argv += ["-I", d]
    for flag in CLANG_FLAGS:
        argv += ["-Xcc", flag]
    result = run(argv)
    mismatched, other = {}, []
    pattern = re.compile(re.escape(source) + r":(\d+):\d+: error: (.*)")
    for text in (result.stdout + result.stderr).splitlines():
        m = pattern.match(text)
        if m and int(m.group(1)) in line_of:
            # "(aka '...')" spells CChar as Int8 and so on: noise here.
            mismatched.setdefault(line_of[int(m.group(1))], re.sub(r" \(aka '[^']*'\)", "", m.group(2)))
        elif ": error: " in text:
            other.append(text)
    if result.returncode != 0 and not mismatched and not other:
        other.append(result.stdout + result.stderr)
    return mismatched, other


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("headers", nargs="*", default=["CShim/peruser_swift.h"], metavar="HEADER")
    parser.add_argument("--swift", default=os.environ.get("SWIFT", "swift"),
                        help="the swift driver; its directory gives swiftc and the other tools")
    parser.add_argument("--modules", default=None,
                        help="where swift build put the .swiftmodule files (default .build/release/Modules)")
    parser.add_argument("--module", default="PeruserModule", help="the module with the @_cdecl functions")
    parser.add_argument("-I", dest="includes", action="append", default=[],
                        help="more module search paths (Sources/*/module.modulemap are added)")
    parser.add_argument("--Xcc", dest="clang_flags", action="append", default=[],
                        help="a flag for the Clang importer, as the module's build gives it (-I..., -D...)")
    args = parser.parse_args()
    CLANG_FLAGS.extend(args.clang_flags or package_clang_flags())

    swift = shutil.which(args.swift)
    if not swift:
        sys.exit(f"check-boundary: {args.swift} not found")
    bin_dir = os.path.dirname(os.path.realpath(swift))
    swiftc, extract, clang = (os.path.join(bin_dir, tool)
                              for tool in ("swiftc", "swift-symbolgraph-extract", "clang"))
    modules = args.modules
    if modules is None:
        modules = os.path.join(REPO, ".build", "release", "Modules")
        if not os.path.isdir(modules):
            modules = os.path.dirname(modules)
    search = [modules] + args.includes + sorted(
        os.path.dirname(m) for m in glob.glob(os.path.join(REPO, "Sources", "*", "module.modulemap")))
    cache = os.path.join(REPO, ".build", "boundary-module-cache")
    info = run([swiftc, "-print-target-info"])
    if info.returncode != 0:
        fail_tool("swiftc -print-target-info", info)
    target = json.loads(info.stdout)["target"]["triple"]

    declared = {}  # C name -> (header, line, C type, parameter count)
    for header in args.headers:
        for name, (line, ctype, params) in header_functions(clang, header, search).items():
            declared.setdefault(name, (header, line, ctype, params))
    defined = cdecl_functions(extract, args.module, search, cache, target)

    problems = []
    for name in sorted(set(declared) - set(defined)):
        header, line, ctype, _ = declared[name]
        problems.append(f"{name}: declared in {relative(header)}:{line} ({ctype}) but no @_cdecl "
                        f"function of {args.module} defines it")
    pairs = {}
    for name in sorted(defined):
        symbols = defined[name]
        if len(symbols) > 1:
            problems.append(f"{name}: defined by more than one @_cdecl function: "
                            + ", ".join(f"{s['title']} at {s['where']}" for s in symbols))
            continue
        s = symbols[0]
        if name not in declared:
            problems.append(f"{name}: @_cdecl function {s['title']} at {s['where']} is not declared "
                            f"in {', '.join(relative(h) for h in args.headers)}")
            continue
        if s["access"] not in ("public", "open"):
            problems.append(f"{name}: @_cdecl function {s['title']} at {s['where']} is {s['access']}; "
                            "make it public so that it can be checked")
            continue
        pairs[name] = s["path"]

    with tempfile.TemporaryDirectory() as work:
        mismatched, other = compare_types(swiftc, pairs, args.headers, args.module, search, cache, work)
    for name in sorted(mismatched):
        header, line, ctype, params = declared[name]
        s = defined[name][0]
        count = (f"\n    {params} parameter(s) in the header, {s['params']} in Swift"
                 if params != s["params"] else "")
        problems.append(f"{name}: the header's prototype and the @_cdecl function disagree{count}\n"
                        f"    header {relative(header)}:{line}: {ctype}\n"
                        f"    Swift  {s['where']}: {s['declaration']}\n"
                        f"    swiftc: {mismatched[name]}")
    problems += [f"swiftc: {text}" for text in other]

    if problems:
        sys.stderr.write("check-boundary: the C header and the Swift @_cdecl functions disagree:\n")
        for p in problems:
            sys.stderr.write(f"  {p}\n")
        sys.exit(1)
    print(f"check-boundary: {len(pairs)} functions of {', '.join(relative(h) for h in args.headers)} "
          f"match the @_cdecl functions of {args.module}")


if __name__ == "__main__":
    main()
