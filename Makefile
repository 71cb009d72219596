# make          builds build/mod_mpm_peruser.so (Swift release build + apxs link)
# make test     unit tests (swift test), the integration suite against Debian's apache2, and
#               Apache's own test suite under prefork and under this MPM (make conformance)
# make demo     builds and starts a demo server on 127.0.0.1:8080 (see README)
export PATH := $(PATH):/opt/swift/usr/bin
SWIFT       ?= swift
APXS        ?= apxs
SWIFT_DIR   ?= $(shell dirname $$(dirname $$(readlink -f $$(command -v $(SWIFT)))))/lib/swift_static/linux
SWIFT_BUILD := .build/release/libPeruserSwift.a
MODULE      := build/mod_mpm_peruser.so
# `make LINK_STRIP=` keeps symbols, for perf.
LINK_STRIP  ?= -Wl,-s

SWIFT_SOURCES := Package.swift $(shell find Sources -type f)
C_FILES       := mod_mpm_peruser.c directives.c connection.c
C_SOURCES     := $(addprefix CShim/,$(C_FILES)) CShim/peruser.h CShim/peruser_swift.h Sources/CPeruserShim/peruser_shim.h

.PHONY: all deps test unit integration conformance demo demo-stop bench deb clean

all: $(MODULE)

$(SWIFT_BUILD): $(SWIFT_SOURCES)
	rm -f $@  # the archive keeps objects of deleted sources otherwise
	$(SWIFT) build -c release --product PeruserSwift

# apxs compiles the shim; the link adds the Swift library, the static Swift runtime
# (swiftrt.o registers the Swift metadata sections and is mandatory), and a version script
# that exports the module struct alone. First, check-boundary.py fails the build when
# CShim/peruser_swift.h and the @_cdecl functions of the Swift build disagree.
$(MODULE): $(SWIFT_BUILD) $(C_SOURCES) apxs/peruser.map apxs/check-symbols.sh apxs/check-boundary.py
	python3 apxs/check-boundary.py --swift $(SWIFT) -I Sources/CPeruserShim CShim/peruser_swift.h
	@mkdir -p build/obj
	cp $(C_SOURCES) build/obj/
	cd build/obj && $(APXS) -c -Wc,-Wall -Wc,-Werror=implicit-function-declaration \
	    -Wc,-std=gnu99 -o mod_mpm_peruser.la $(C_FILES) \
	    $(CURDIR)/$(SWIFT_BUILD) $(SWIFT_DIR)/x86_64/swiftrt.o \
	    -L$(SWIFT_DIR) -lswiftCore -lswiftGlibc -lswift_StringProcessing -lswift_RegexParser \
	    -lswiftSynchronization -lstdc++ -lm -ldl -lpthread \
	    -Wl,--version-script=$(CURDIR)/apxs/peruser.map -Wl,--gc-sections -Wl,-z,relro -Wl,-z,now $(LINK_STRIP) \
	    >build.log 2>&1 || { cat build.log; exit 1; }
	# Renamed into place: an Apache running the old build keeps its mapping (cp over it
	# changes the code under a running server, which then crashes).
	cp build/obj/.libs/mod_mpm_peruser.so $(MODULE).new
	sh apxs/check-symbols.sh $(MODULE).new
	mv -f $(MODULE).new $(MODULE)

deps:
	sh scripts/install-deps.sh

unit: deps
	$(SWIFT) test

integration: deps $(MODULE)
	python3 -m pytest -q -p no:cacheprovider tests/integration

test: unit integration conformance

# Apache's own test suite (../shared/httpd-tests) under prefork and under this MPM, compared
# file by file and subtest by subtest (about 12 minutes; CONFORMANCE.md has the counts).
conformance: deps $(MODULE)
	sh scripts/install-httpd-tests-deps.sh
	python3 tests/conformance/run_httpd_tests.py

demo: deps $(MODULE)
	sh demo/run.sh

demo-stop:
	sh demo/stop.sh

# Not a test: measures prefork, prefork + mpm-itk and peruser with wrk; writes BENCHMARKS.md.
bench: deps $(MODULE)
	python3 bench/bench.py

# The Debian package: build/deb/libapache2-mpm-peruser_VERSION_ARCH.deb, checked by lintian.
deb: deps
	sh scripts/install-deb-deps.sh
	dpkg-buildpackage -us -uc -b
	mkdir -p build/deb
	mv ../libapache2-mpm-peruser_* build/deb/
	lintian --fail-on error build/deb/*.changes

clean:
	rm -rf build .build
