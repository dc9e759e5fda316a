# wg-wrap — build, test, demo, install.
#   make            build the launcher (C) and the sidecar (Go) into build/
#   make demo       a local WireGuard peer and a wrapped program talking through it
#   make test       everything: go vet + go test, ruff + mypy, then pytest (unit, property, end to end)
#   make install    PREFIX=/usr/local DESTDIR= BINDIR= LIBEXECDIR= PYTHON=
# Quiet unless V=1.

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
DESTDIR    ?=
PYTHON     ?= /usr/bin/python3
GO         ?= go
STAGE      ?= /var/tmp/wg-wrap-stage
PYTEST_ARGS ?=

V ?= 0
ifeq ($(V),1)
Q =
else
Q = @
endif

CFLAGS ?= -O2 -g
LAUNCHER_CFLAGS = -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wconversion \
	-Wno-sign-conversion -Wmissing-prototypes -Wstrict-prototypes \
	-D_FORTIFY_SOURCE=2 -fstack-protector-strong

SIDECAR_SOURCES = $(shell find go-sidecar -name '*.go' -not -name '*_test.go') \
	go-sidecar/go.mod go-sidecar/go.sum

.PHONY: all binaries test test-go test-py stage demo install clean lint

all: binaries

binaries: build/wg-wrap-launcher build/wg-wrap-sidecar

build/wg-wrap-launcher: launcher/wg-wrap-launcher.c
	@mkdir -p build
	@echo "  CC      $@"
	$(Q)$(CC) $(CFLAGS) $(LAUNCHER_CFLAGS) $(LDFLAGS) -o $@ $<

build/wg-wrap-sidecar: $(SIDECAR_SOURCES)
	@mkdir -p build
	@echo "  GO      $@"
	$(Q)cd go-sidecar && CGO_ENABLED=0 $(GO) build -trimpath -o ../build/wg-wrap-sidecar .

install: binaries
	$(Q)install -d $(DESTDIR)$(LIBEXECDIR)/wg-wrap
	$(Q)install -m 0755 build/wg-wrap-launcher build/wg-wrap-sidecar $(DESTDIR)$(LIBEXECDIR)/wg-wrap/
	$(Q)$(PYTHON) scripts/install-python.py --prefix=$(PREFIX) --bindir=$(BINDIR) \
		--destdir=$(DESTDIR) .

# A world-readable install for the unprivileged test user (see tests/conftest.py).
stage: binaries
	$(Q)STAGE=$(STAGE) PYTHON=$(PYTHON) scripts/stage.sh

test-go:
	$(Q)cd go-sidecar && $(GO) vet ./... && $(GO) test -count=1 ./...

test-py: stage
	$(Q)if [ "$$(id -u)" = 0 ]; then scripts/prepare-test-machine.sh; fi
	$(Q)$(STAGE)/venv/bin/python -m pytest $(PYTEST_ARGS)

test: test-go lint test-py

demo: stage
	$(Q)$(STAGE)/venv/bin/python -m wg_wrap demo

lint: stage
	$(Q)$(STAGE)/venv/bin/python -m ruff check wg_wrap tests scripts
	$(Q)$(STAGE)/venv/bin/python -m mypy

clean:
	$(Q)rm -rf build dist *.egg-info
