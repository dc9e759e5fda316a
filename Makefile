# wg-wrap — build, test, demo, install, package.
#   make            build the launcher (C) and the sidecar (Go) into build/, offline
#   make demo       a local WireGuard peer and a wrapped program talking through it
#   make test       everything: go vet + go test, ruff + mypy, then pytest (unit, property, end to end)
#   make install    PREFIX=/usr/local DESTDIR= BINDIR= LIBEXECDIR= MANDIR= DATADIR= PYTHON=
#   make dist       wg-wrap-VERSION.tar.gz: the source a packager needs, vendored Go modules included
#   make vendor     refresh go-sidecar/vendor/ from go.mod (needs the network)
#   make docs       regenerate the man page and the shell completions from the parser
#   make deb        dist/wg-wrap_VERSION-1_ARCH.deb (packaging/debian), built offline
#   make rpm        dist/wg-wrap-VERSION-1.ARCH.rpm (packaging/rpm/wg-wrap.spec)
#   make pkgbuild   dist/PKGBUILD beside the tarball, with its sha256sum
#   make sdist      dist/wg_wrap-VERSION.tar.gz: the Python sdist, from the dist tarball
#   make wheel      dist/wg_wrap-VERSION-py3-none-…_ARCH.whl, static helpers, from the sdist
#                   (ARCH=x86_64 or aarch64, default: this machine's; `make wheels`: both)
#   make release    sdist, both wheels, .deb, .rpm, PKGBUILD and dist/SHA256SUMS
# Quiet unless V=1. The build never touches the network: Go modules come from
# go-sidecar/vendor/, and GOTOOLCHAIN=local forbids toolchain downloads. (The
# sdist and the wheels are built with pinned Python tools, which `make` fetches
# from PyPI once into build/wheel-tools unless WHEEL_PYTHON names an
# interpreter that has them: packaging/wheel/requirements.txt.)

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' wg_wrap/__init__.py)

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
DATADIR    ?= $(PREFIX)/share
MANDIR     ?= $(DATADIR)/man
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR  ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
SYSTEMDUSERUNITDIR ?= $(PREFIX)/lib/systemd/user
DESTDIR    ?=
PYTHON     ?= /usr/bin/python3
GO         ?= go
STAGE      ?= /var/tmp/wg-wrap-stage
DISTDIR    ?= dist
PYTEST_ARGS ?=

V ?= 0
ifeq ($(V),1)
Q =
else
Q = @
endif

# The C launcher: the distribution's CPPFLAGS, CFLAGS and LDFLAGS are honoured
# (they come after ours, so they win); hardening is on by default: PIE, full
# RELRO, BIND_NOW, stack protector, _FORTIFY_SOURCE unless already chosen.
# -ffile-prefix-map keeps the build directory out of the binary.
CFLAGS ?= -O2 -g
LAUNCHER_CPPFLAGS = -DWG_WRAP_VERSION='"$(VERSION)"' \
	$(if $(findstring _FORTIFY_SOURCE,$(CPPFLAGS) $(CFLAGS)),,-D_FORTIFY_SOURCE=2)
LAUNCHER_CFLAGS = -std=gnu11 -fPIE -fstack-protector-strong -ffile-prefix-map=$(CURDIR)=. \
	-Wall -Wextra -Werror -Wshadow -Wformat=2 -Wconversion \
	-Wno-sign-conversion -Wmissing-prototypes -Wstrict-prototypes
# Static (and still PIE): the launcher also stays resident as each profile's
# aftercare process, where a static binary costs a few hundred KiB of memory
# and glibc's dynamic loader and libc pages would cost megabytes.
LAUNCHER_LDFLAGS = -static-pie -Wl,-z,relro -Wl,-z,now
LAUNCHER_SOURCES = launcher/wg-wrap-launcher.c launcher/aftercare.c

# The Go sidecar: vendored modules, no paths, build ids or VCS stamps baked
# in; a static executable (Go's default), not PIE: Go's PIE is loaded by the
# dynamic loader, which relocates half a MiB of its data into private memory
# in every sidecar, one per profile (docs/benchmarks.md), while the pages of
# a plain executable are the file's, shared by all of them. A distribution
# whose rules ask for PIE passes GO_BUILDFLAGS=-buildmode=pie (the last one
# wins; BIND_NOW is already asked for). GO_BUILDFLAGS adds the packager's own
# flags to `go build`, GO_LDFLAGS to the linker's (a second -ldflags would
# replace ours), e.g. a GNU build ID (-B 0x…) for the debug symbols.
GO_BUILDFLAGS ?=
GO_LDFLAGS ?=
SIDECAR_GOFLAGS = -mod=vendor -trimpath -buildvcs=false -buildmode=exe \
	-ldflags='-buildid= -bindnow -X main.version=$(VERSION) $(GO_LDFLAGS)' $(GO_BUILDFLAGS)
GO_ENV = CGO_ENABLED=0 GOTOOLCHAIN=local GOPROXY=off GOFLAGS= GOCACHE=$(GO_CACHE)
# Go needs a build cache: its own default where that exists or $HOME can
# hold it, else (package builders: no $HOME, or a read-only one) build/.
GO_CACHE = $(shell d=$$($(GO) env GOCACHE 2>/dev/null); \
	if [ -n "$$d" ] && [ "$$d" != off ] && { [ -w "$$d" ] || { [ ! -e "$$d" ] && \
		[ -d "$$HOME" ] && [ -w "$$HOME" ]; }; }; \
	then echo "$$d"; else echo "$(CURDIR)/build/go-cache"; fi)

SIDECAR_SOURCES = $(shell find go-sidecar -name '*.go' -not -name '*_test.go' -not -path '*/vendor/*') \
	go-sidecar/go.mod go-sidecar/go.sum go-sidecar/vendor/modules.txt

.PHONY: all binaries test test-go test-py stage demo install install-binaries install-data \
	clean lint vendor dist docs deb rpm pkgbuild sdist wheel wheels release

all: binaries

binaries: build/wg-wrap-launcher build/wg-wrap-sidecar

build/wg-wrap-launcher: $(LAUNCHER_SOURCES) launcher/aftercare.h wg_wrap/__init__.py
	@mkdir -p build
	@echo "  CC      $@"
	$(Q)$(CC) $(LAUNCHER_CPPFLAGS) $(CPPFLAGS) $(LAUNCHER_CFLAGS) $(CFLAGS) $(LAUNCHER_LDFLAGS) $(LDFLAGS) -o $@ $(LAUNCHER_SOURCES)

build/wg-wrap-sidecar: $(SIDECAR_SOURCES) wg_wrap/__init__.py
	@mkdir -p build
	@echo "  GO      $@"
	$(Q)cd go-sidecar && $(GO_ENV) $(GO) build $(SIDECAR_GOFLAGS) -o ../build/wg-wrap-sidecar .

install: install-binaries install-data
	$(Q)$(PYTHON) scripts/install-python.py --prefix=$(PREFIX) --bindir=$(BINDIR) \
		--destdir=$(DESTDIR) .

install-binaries: binaries
	$(Q)install -d $(DESTDIR)$(LIBEXECDIR)/wg-wrap
	$(Q)install -m 0755 build/wg-wrap-launcher build/wg-wrap-sidecar $(DESTDIR)$(LIBEXECDIR)/wg-wrap/

# The systemd user unit and the AppArmor profile name the installed paths;
# the man page and the completions are committed (`make docs`).
install-data:
	$(Q)install -d $(DESTDIR)$(SYSTEMDUSERUNITDIR) $(DESTDIR)$(DATADIR)/wg-wrap/apparmor \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) \
		$(DESTDIR)$(FISHCOMPDIR)
	$(Q)install -m 0644 packaging/man/wg-wrap.1 $(DESTDIR)$(MANDIR)/man1/wg-wrap.1
	$(Q)install -m 0644 packaging/completions/wg-wrap.bash $(DESTDIR)$(BASHCOMPDIR)/wg-wrap
	$(Q)install -m 0644 packaging/completions/_wg-wrap $(DESTDIR)$(ZSHCOMPDIR)/_wg-wrap
	$(Q)install -m 0644 packaging/completions/wg-wrap.fish $(DESTDIR)$(FISHCOMPDIR)/wg-wrap.fish
	$(Q)sed 's|@BINDIR@|$(BINDIR)|g' packaging/systemd/wg-wrap@.service.in \
		> $(DESTDIR)$(SYSTEMDUSERUNITDIR)/wg-wrap@.service
	$(Q)chmod 0644 $(DESTDIR)$(SYSTEMDUSERUNITDIR)/wg-wrap@.service
	$(Q)sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' packaging/apparmor/wg-wrap-launcher.in \
		> $(DESTDIR)$(DATADIR)/wg-wrap/apparmor/wg-wrap-launcher
	$(Q)chmod 0644 $(DESTDIR)$(DATADIR)/wg-wrap/apparmor/wg-wrap-launcher

# A world-readable install for the unprivileged test user (see tests/conftest.py).
stage: binaries
	$(Q)STAGE=$(STAGE) PYTHON=$(PYTHON) scripts/stage.sh

test-go:
	$(Q)cd go-sidecar && GOFLAGS=-mod=vendor GOTOOLCHAIN=local $(GO) vet ./... && \
		GOFLAGS=-mod=vendor GOTOOLCHAIN=local $(GO) test -count=1 ./...

test-py: stage
	$(Q)if [ "$$(id -u)" = 0 ]; then scripts/prepare-test-machine.sh; fi
	$(Q)WG_WRAP_STAGE=$(STAGE) $(STAGE)/venv/bin/python -m pytest $(PYTEST_ARGS)

test: test-go lint test-py

# The man page and the shell completions, from the argparse parser
# (scripts/gen-docs.py: argparse-manpage and shtab, pinned in scripts/stage.sh).
# The output is committed, so building and installing need neither tool.
docs: stage
	$(Q)$(STAGE)/venv/bin/python scripts/gen-docs.py

demo: stage
	$(Q)$(STAGE)/venv/bin/python -m wg_wrap demo

lint: stage
	$(Q)$(STAGE)/venv/bin/python -m ruff check wg_wrap tests scripts
	$(Q)$(STAGE)/venv/bin/python -m mypy

vendor:
	$(Q)cd go-sidecar && $(GO) mod tidy && $(GO) mod verify && $(GO) mod vendor

# The tracked files as they are in the working tree, in a tarball that is the
# same byte for byte on every run: sorted, owned by 0, mtime of the last commit.
dist:
	@mkdir -p $(DISTDIR)
	@echo "  DIST    $(DISTDIR)/wg-wrap-$(VERSION).tar.gz"
	$(Q)SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct)} && \
	git ls-files -z | LC_ALL=C tar --null -T - --sort=name --format=gnu \
		--owner=0 --group=0 --numeric-owner --mode=go=rX,u+rw,a-s \
		--mtime=@$$SOURCE_DATE_EPOCH --transform='s,^,wg-wrap-$(VERSION)/,' -cf - \
		| gzip -n -9 > $(DISTDIR)/wg-wrap-$(VERSION).tar.gz.tmp
	$(Q)mv $(DISTDIR)/wg-wrap-$(VERSION).tar.gz.tmp $(DISTDIR)/wg-wrap-$(VERSION).tar.gz

# Package builds: from the dist tarball, like a distribution's builder, in a
# directory of their own below $(DISTDIR); their logs are kept there (shown
# with V=1, and their tail on failure).
PKG_LOG = if [ "$(V)" = 1 ]; then $(1); else $(1) >$(2) 2>&1 || \
	{ tail -n 40 $(2) >&2; echo "make: $@ failed, log: $(2)" >&2; exit 1; }; fi

DEB_BUILDDIR = $(DISTDIR)/deb-build
DEB_SRCDIR = $(DEB_BUILDDIR)/wg-wrap-$(VERSION)
DEB_VERSION = $(shell dpkg-parsechangelog -l packaging/debian/changelog -S Version 2>/dev/null)
DEB_ARCH = $(shell dpkg-architecture -qDEB_HOST_ARCH 2>/dev/null)
DEB = wg-wrap_$(DEB_VERSION)_$(DEB_ARCH).deb
# dpkg-buildpackage -d: Go (>= 1.23, go.mod says so) is not a Debian package
# here (Debian 12's golang-go is 1.19; /usr/local/go, or a backport), so the
# Build-Depends check would refuse the build. The other build dependencies
# are checked here instead, and Go by the build itself (GOTOOLCHAIN=local
# refuses a Go older than go.mod's, naming both versions).
deb: dist
	$(Q)[ "$(DEB_VERSION:%-$(lastword $(subst -, ,$(DEB_VERSION)))=%)" = $(VERSION) ] || \
		{ echo "make: packaging/debian/changelog is at '$(DEB_VERSION)', wg-wrap at $(VERSION)" >&2; exit 1; }
	$(Q)rm -rf $(DEB_BUILDDIR) && mkdir -p $(DEB_BUILDDIR)
	$(Q)tar -xzf $(DISTDIR)/wg-wrap-$(VERSION).tar.gz -C $(DEB_BUILDDIR)
	$(Q)ln -s ../wg-wrap-$(VERSION).tar.gz $(DEB_BUILDDIR)/wg-wrap_$(VERSION).orig.tar.gz
	$(Q)cp -R $(DEB_SRCDIR)/packaging/debian $(DEB_SRCDIR)/debian
	$(Q)cd $(DEB_SRCDIR) && unmet=$$(dpkg-checkbuilddeps 2>&1 | \
		sed -n 's/^.*Unmet build dependencies: //p' | sed 's/golang-go ([^)]*)//; s/^ *//; s/ *$$//') && \
		[ -z "$$unmet" ] || { echo "make: missing build dependencies: $$unmet" >&2; exit 1; }
	@echo "  DEB     $(DISTDIR)/$(DEB)"
	$(Q)cd $(DEB_SRCDIR) && \
		$(call PKG_LOG,dpkg-buildpackage -us -uc -b -d,$(abspath $(DEB_BUILDDIR))/build.log)
	$(Q)mv $(DEB_BUILDDIR)/*.deb $(DEB_BUILDDIR)/*.changes $(DEB_BUILDDIR)/*.buildinfo $(DISTDIR)/
	$(Q)rm -rf $(DEB_SRCDIR)

RPM_BUILDDIR = $(DISTDIR)/rpm-build
RPMBUILD_FLAGS ?=
rpm: dist
	$(Q)rm -rf $(RPM_BUILDDIR) && mkdir -p $(RPM_BUILDDIR)/SOURCES
	$(Q)cp $(DISTDIR)/wg-wrap-$(VERSION).tar.gz $(RPM_BUILDDIR)/SOURCES/
	@echo "  RPM     $(DISTDIR)/$$(rpmspec -q --qf '%{name}-%{version}-%{release}.%{arch}.rpm\n' \
		packaging/rpm/wg-wrap.spec 2>/dev/null | head -n 1)"
	$(Q)$(call PKG_LOG,rpmbuild -bb --define '_topdir $(abspath $(RPM_BUILDDIR))' \
		$(RPMBUILD_FLAGS) packaging/rpm/wg-wrap.spec,$(abspath $(RPM_BUILDDIR))/build.log)
	$(Q)mv $(RPM_BUILDDIR)/RPMS/*/*.rpm $(DISTDIR)/
	$(Q)rm -rf $(RPM_BUILDDIR)/BUILD $(RPM_BUILDDIR)/BUILDROOT

# The PKGBUILD in the tree says sha256sums=('SKIP'): it travels inside the
# tarball it describes, so it cannot hold that tarball's hash. Beside the
# tarball, for makepkg or the AUR, it gets the real one.
pkgbuild: dist
	@echo "  PKGBUILD $(DISTDIR)/PKGBUILD"
	$(Q)sum=$$(sha256sum $(DISTDIR)/wg-wrap-$(VERSION).tar.gz | cut -d' ' -f1) && \
	sed "s/^sha256sums=('SKIP').*/sha256sums=('$$sum')/" packaging/arch/PKGBUILD > $(DISTDIR)/PKGBUILD
	$(Q)grep -q "^pkgver=$(VERSION)$$" $(DISTDIR)/PKGBUILD || \
		{ echo "make: packaging/arch/PKGBUILD's pkgver is not $(VERSION)" >&2; exit 1; }

# ---- the sdist and the wheels ---------------------------------------------------
# One wheel per architecture runs on every Linux of it, glibc or musl, because
# both helpers are static (no NEEDED, no interpreter): the launcher is linked
# with glibc's -static-pie (PIE, RELRO, BIND_NOW and the stack protector kept,
# and the same headers as `make`), by Debian's x86_64-linux-gnu-gcc and
# aarch64-linux-gnu-gcc (cross); the sidecar with CGO_ENABLED=0 and
# -buildmode=exe, as `make` builds it. Both stripped,
# built with fixed flags: the distribution's CFLAGS and GO_* flags are for
# `make`, not for a wheel that must build the same everywhere. The platform
# tags are manylinux_2_17 (manylinux2014) and musllinux_1_1: the helpers use
# no symbol of the system's libc, so the floor is the kernel: Go and static
# glibc need Linux >= 3.2 (3.7 on aarch64), which manylinux2014's CentOS 7
# (3.10) has and manylinux2010's CentOS 6 (2.6.32) has not.
# Wheels are built from the sdist (what PyPI users could build from), the
# sdist from the dist tarball (the tracked files); scripts/repack.py makes
# both depend on their contents only, dated by the last commit.
ARCH ?= $(shell uname -m)
WHEEL_ARCH = $(patsubst amd64,x86_64,$(patsubst arm64,aarch64,$(ARCH)))
WHEEL_ARCHS = x86_64 aarch64
WHEEL_TARGETS = $(WHEEL_ARCHS:%=wheel-%)
GOARCH_x86_64 = amd64
GOARCH_aarch64 = arm64
WHEEL_CC_x86_64 ?= x86_64-linux-gnu-gcc
WHEEL_CC_aarch64 ?= aarch64-linux-gnu-gcc
WHEEL_LAUNCHER_FLAGS = -DWG_WRAP_VERSION='"$(VERSION)"' -D_FORTIFY_SOURCE=2 -O2 \
	$(LAUNCHER_CFLAGS) -static-pie -Wl,-z,relro -Wl,-z,now -s
# GOAMD64/GOARM64: the baseline of each architecture, whatever the environment says.
WHEEL_GO_ENV = $(GO_ENV) GOOS=linux GOAMD64=v1 GOARM64=v8.0
WHEEL_GOFLAGS = -mod=vendor -trimpath -buildvcs=false -buildmode=exe \
	-ldflags='-buildid= -s -w -X main.version=$(VERSION)'
# The platform tags, and the wheel's name with them sorted as `wheel tags` writes it.
WHEEL_PLATFORMS = manylinux_2_17_$(1).manylinux2014_$(1).musllinux_1_1_$(1)
WHEEL_FILE = wg_wrap-$(VERSION)-py3-none-manylinux2014_$(1).manylinux_2_17_$(1).musllinux_1_1_$(1).whl
SDIST_FILE = wg_wrap-$(VERSION).tar.gz
WHEEL_TOOLS = build/wheel-tools
WHEEL_PYTHON ?= $(WHEEL_TOOLS)/bin/python
WHEEL_TOOLS_READY = $(if $(filter $(WHEEL_TOOLS)/bin/python,$(WHEEL_PYTHON)),$(WHEEL_TOOLS)/ready)
EPOCH = $${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct)}

ifneq ($(filter wheel,$(MAKECMDGOALS)),)
ifeq ($(filter $(WHEEL_ARCH),$(WHEEL_ARCHS)),)
$(error make wheel: ARCH=$(ARCH): wheels are built for $(WHEEL_ARCHS))
endif
endif

$(WHEEL_TOOLS)/ready: packaging/wheel/requirements.txt
	@echo "  VENV    $(WHEEL_TOOLS)"
	$(Q)rm -rf $(WHEEL_TOOLS) && $(PYTHON) -m venv $(WHEEL_TOOLS)
	$(Q)$(WHEEL_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check \
		--require-hashes --only-binary=:all: -r packaging/wheel/requirements.txt
	$(Q)touch $@

build/wheel-%/wg-wrap-launcher: $(LAUNCHER_SOURCES) launcher/aftercare.h wg_wrap/__init__.py
	@mkdir -p $(@D)
	@echo "  CC      $@"
	$(Q)$(WHEEL_CC_$*) $(WHEEL_LAUNCHER_FLAGS) -o $@ $(LAUNCHER_SOURCES)

build/wheel-%/wg-wrap-sidecar: $(SIDECAR_SOURCES) wg_wrap/__init__.py
	@mkdir -p $(@D)
	@echo "  GO      $@"
	$(Q)cd go-sidecar && $(WHEEL_GO_ENV) GOARCH=$(GOARCH_$*) $(GO) build $(WHEEL_GOFLAGS) -o ../$@ .

sdist: dist $(WHEEL_TOOLS_READY)
	@echo "  SDIST   $(DISTDIR)/$(SDIST_FILE)"
	$(Q)rm -rf build/sdist && mkdir -p build/sdist
	$(Q)tar -xzf $(DISTDIR)/wg-wrap-$(VERSION).tar.gz -C build/sdist
	$(Q)$(call PKG_LOG,SOURCE_DATE_EPOCH=$(EPOCH) $(WHEEL_PYTHON) -m build --sdist --no-isolation \
		--outdir build/sdist/out build/sdist/wg-wrap-$(VERSION),build/sdist.log)
	$(Q)SOURCE_DATE_EPOCH=$(EPOCH) $(WHEEL_PYTHON) scripts/repack.py sdist \
		build/sdist/out/$(SDIST_FILE) $(DISTDIR)/$(SDIST_FILE)

wheel: wheel-$(WHEEL_ARCH)

wheels: $(WHEEL_TARGETS)

# setup.py copies the helpers named by WG_WRAP_HELPERS_DIR instead of building.
$(WHEEL_TARGETS): wheel-%: sdist build/wheel-%/wg-wrap-launcher build/wheel-%/wg-wrap-sidecar
	@echo "  WHEEL   $(DISTDIR)/$(call WHEEL_FILE,$*)"
	$(Q)rm -rf build/wheel-$*/src build/wheel-$*/out && mkdir -p build/wheel-$*/src
	$(Q)tar -xzf $(DISTDIR)/$(SDIST_FILE) -C build/wheel-$*/src
	$(Q)umask 022 && $(call PKG_LOG,WG_WRAP_HELPERS_DIR=$(abspath build/wheel-$*) \
		SOURCE_DATE_EPOCH=$(EPOCH) $(WHEEL_PYTHON) -m build --wheel --no-isolation \
		--outdir build/wheel-$*/out build/wheel-$*/src/wg_wrap-$(VERSION),build/wheel-$*/build.log)
	$(Q)$(WHEEL_PYTHON) -m wheel tags --remove --python-tag=py3 --abi-tag=none \
		--platform-tag=$(call WHEEL_PLATFORMS,$*) build/wheel-$*/out/wg_wrap-$(VERSION)-*.whl >/dev/null
	$(Q)SOURCE_DATE_EPOCH=$(EPOCH) $(WHEEL_PYTHON) scripts/repack.py wheel \
		build/wheel-$*/out/$(call WHEEL_FILE,$*) $(DISTDIR)/$(call WHEEL_FILE,$*)

# Everything a release publishes, and their checksums. On Debian, pass
# RPMBUILD_FLAGS=--nodeps (see `make rpm`).
RPM_FILE = $(shell rpmspec -q --qf '%{name}-%{version}-%{release}.%{arch}.rpm\n' \
	packaging/rpm/wg-wrap.spec 2>/dev/null | head -n 1)
RELEASE_FILES = wg-wrap-$(VERSION).tar.gz $(SDIST_FILE) \
	$(foreach a,$(WHEEL_ARCHS),$(call WHEEL_FILE,$(a))) $(DEB) $(RPM_FILE) PKGBUILD
release: sdist wheels deb rpm pkgbuild
	@echo "  SUMS    $(DISTDIR)/SHA256SUMS"
	$(Q)cd $(DISTDIR) && sha256sum $(RELEASE_FILES) > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS

clean:
	$(Q)rm -rf build dist *.egg-info
