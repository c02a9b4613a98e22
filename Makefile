# containerd-shim-vz. Targets (see README.md):
#   build        every command under cmd/ into _output/bin/ (default)
#   agent-arm64  the guest agent for linux/arm64 into _output/bin/linux-arm64/
#   deps         Debian packages (hack/deps.sh) and pinned Go tools (hack/tools.sh)
#   proto        regenerate the Go code in api/ from its .proto files
#   proto-check  fail if the committed code in api/ is not what `make proto` generates
#   lint         gofmt, go vet, staticcheck
#   darwin-check darwin-nocgo, then type-check every host package for darwin/arm64 and
#                darwin/amd64, cgo files included (hack/darwincheck; DESIGN.md §8)
#   darwin-nocgo GOOS=darwin CGO_ENABLED=0 build and vet of every host package that needs no cgo
#   darwin       on a Mac: the shim (and snapshotter) with cgo, the shim signed with
#                hack/vz.entitlements
#   install      binaries of _output/bin and the guest files of _output/guest into
#                $(DESTDIR)$(PREFIX) (PREFIX=/usr/local)
#   test         deps, lint, darwin-check, proto-check, build, agent-arm64, containerd, guest
#                (host arch), then go test -race of everything, integration tests included
#                (needs root)
#   bench        benchmarks: numbers side by side, no assertions (needs root)
#   fuzz         every fuzz target for FUZZTIME (10s) each; make test runs it too
#   soak         SOAK_CYCLES (200) ctr run --rm cycles, SOAK_VMS (20) VMs at once, a STORM (10m) of 8
#                parallel run/exec/kill loops, BIG_OUTPUT (10 GiB) of stdout, with vz: leaks and peaks
#   clean        remove _output/
#   crictl       crictl and critest v1.37.0 (and ginkgo) from the module proxy into _output/crictl/bin/
#   nerdctl      nerdctl v2.2.1 from ../shared/third_party into _output/nerdctl/bin/
#   cni          the CNI plugins of the default network into _output/cni/bin/
#   containerd   containerd 2.4.x's containerd, ctr and containerd-shim-runc-v2 (the versions in
#                go.mod) into _output/containerd/bin/, for the integration tests
#   integration  containerd, then the integration tests (./integration/, needs root); they use
#                _output/bin/containerd-shim-vz-v1 and _output/guest/<arch>/ when present
#   guest        the guest kernel and initramfs: make guest [ARCH=amd64|arm64] (see below)
#   run          a container in a micro-VM from nothing: builds, starts a private containerd,
#                runs one greeting container, tears everything down (needs root)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO ?= go
BIN := _output/bin
TOOLS_BIN := $(CURDIR)/_output/tools/bin

# Every directory under cmd/ that holds Go files is a command, built into $(BIN)/<name>.
CMDS := $(sort $(patsubst cmd/%/,%,$(dir $(wildcard cmd/*/*.go))))
# Guest commands run inside the Linux VM: static (no cgo), built for Linux from any host.
GUEST_CMDS := $(filter vz-agent,$(CMDS))
HOST_CMDS := $(filter-out $(GUEST_CMDS),$(CMDS))

# Packages that lint (vet, staticcheck) and test look at, and extra go test flags:
#   make test PKGS=./agent/... TESTFLAGS='-run TestExec'
PKGS ?= ./...
TESTFLAGS ?=
export PKGS TESTFLAGS

.PHONY: build
build:
	@mkdir -p $(BIN)
	$(if $(HOST_CMDS),$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(HOST_CMDS)))
	$(if $(GUEST_CMDS),GOOS=linux CGO_ENABLED=0 $(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(GUEST_CMDS)))
	$(if $(CMDS),,@echo "build: no commands under cmd/ yet")

.PHONY: agent-arm64
agent-arm64:
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build -o $(BIN)/linux-arm64/vz-agent ./cmd/vz-agent

.PHONY: deps
deps:
	@hack/deps.sh
	@hack/tools.sh

.PHONY: tools
tools:
	@hack/tools.sh

.PHONY: proto
proto: deps
	hack/proto.sh

.PHONY: proto-check
proto-check: deps
	@hack/proto.sh --check

# gofmt looks at tracked files and at new files git does not ignore.
.PHONY: lint
lint: tools
	@echo "gofmt -l"
	@files=$$(git ls-files --cached --others --exclude-standard -- '*.go' \
		| while IFS= read -r f; do [ ! -f "$$f" ] || echo "$$f"; done \
		| xargs -r -d '\n' gofmt -l); \
	if [ -n "$$files" ]; then \
		echo "gofmt: these files are not formatted (fix with: gofmt -w FILE):" >&2; \
		echo "$$files" >&2; \
		exit 1; \
	fi
	$(GO) vet $(PKGS)
	$(TOOLS_BIN)/staticcheck $(PKGS)
	@# The agent's hostile test build (SECURITY.md) too.
	$(GO) vet -tags hostile ./agent/... ./cmd/vz-agent/
	$(TOOLS_BIN)/staticcheck -tags hostile ./agent/... ./cmd/vz-agent/

# Steps run in order (not as prerequisites) so that `make -j test` keeps them sequential and the
# test summary stays the last thing printed.
.PHONY: test
test:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory darwin-check
	@$(MAKE) --no-print-directory proto-check
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory agent-arm64
	@$(MAKE) --no-print-directory containerd
	@$(MAKE) --no-print-directory cni
	@$(MAKE) --no-print-directory nerdctl
	@$(MAKE) --no-print-directory crictl
	@$(MAKE) --no-print-directory guest ARCH=$(HOSTARCH)
	@$(MAKE) --no-print-directory guest ARCH=arm64
	@hack/test.sh
	@$(MAKE) --no-print-directory fuzz

# The long soak: SOAK_CYCLES create/start/delete cycles of ctr run --rm with vz, then the table
# (cycles, failed, leaks found, max shim RSS, max containerd fds), and SOAK_VMS VMs at once (QEMU
# RSS and guest memory per idle VM), STORM of 8 workers running, exec'ing into, killing and
# deleting tasks side by side, and one task writing BIG_OUTPUT to its stdout. make test runs 20
# cycles, 6 VMs and a 40 s storm (TestSoakShort, TestManyVMsShort, TestStormShort).
SOAK_CYCLES ?= 200
SOAK_VMS ?= 20
STORM ?= 10m
BIG_OUTPUT ?= 10737418240
.PHONY: soak
soak: build containerd cni guest
	VZ_SOAK_CYCLES=$(SOAK_CYCLES) VZ_MANY_VMS=$(SOAK_VMS) VZ_STORM=$(STORM) VZ_BIG_OUTPUT=$(BIG_OUTPUT) $(GO) test -run '^$$' -bench '^Benchmark(Soak|ManyVMs|Storm|BigOutput)$$' -benchtime 1x -count 1 -timeout 120m ./integration/

# Every fuzz target for FUZZTIME each (the seed corpora also run as plain tests in make test).
FUZZTIME ?= 10s
.PHONY: fuzz
fuzz: deps
	@FUZZTIME=$(FUZZTIME) hack/fuzz.sh

# Benchmarks print numbers (time per container, agent memory); they assert nothing.
BENCHTIME ?= 20x
.PHONY: bench
bench: deps
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -count 1 $(PKGS)

.PHONY: clean
clean:
	rm -rf _output

# Warm start's saved template VMs (runtime option template_dir; this is its default as root). Each
# is remade by the next task that needs it.
TEMPLATE_DIR ?= /var/cache/containerd-vz/templates
.PHONY: clean-templates
clean-templates:
	@du -sh $(TEMPLATE_DIR) 2>/dev/null || true
	rm -rf $(TEMPLATE_DIR)

.PHONY: run
run:
	@hack/run.sh

# containerd, ctr and the runc shim at the version go.mod pins (kept in go.sum through the `tool`
# directives), built from this module: `go install pkg@version` of containerd is refused because of
# its exclude directives. Rebuilt when go.mod or go.sum change; the Go build cache makes that fast.
CONTAINERD_BIN := _output/containerd/bin
CONTAINERD_PKGS := \
	github.com/containerd/containerd/v2/cmd/containerd \
	github.com/containerd/containerd/v2/cmd/ctr \
	github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
CONTAINERD_TAGS := no_btrfs no_devmapper no_zfs
CONTAINERD_BINS := $(addprefix $(CONTAINERD_BIN)/,$(notdir $(CONTAINERD_PKGS)))

.PHONY: containerd
containerd: $(CONTAINERD_BINS)

# go build leaves an up-to-date binary untouched: touch them so make sees them as new.
$(CONTAINERD_BINS) &: go.mod go.sum
	@mkdir -p $(CONTAINERD_BIN)
	CGO_ENABLED=0 $(GO) build -tags "$(CONTAINERD_TAGS)" -o $(CONTAINERD_BIN)/ $(CONTAINERD_PKGS)
	@touch $(CONTAINERD_BINS)

# The CNI plugins of the default network (network = "cni"), at the version go.mod pins, into
# _output/cni/bin/, where the shim of this tree finds them (<shim>/../cni/bin) when /opt/cni/bin
# lacks them. `make install` puts them in $PREFIX/libexec/containerd-vz/cni/.
CNI_BIN := _output/cni/bin
CNI_PKGS := $(addprefix github.com/containernetworking/plugins/plugins/,\
	main/bridge main/loopback ipam/host-local meta/portmap meta/firewall meta/tuning)
CNI_BINS := $(addprefix $(CNI_BIN)/,$(notdir $(CNI_PKGS)))

.PHONY: cni
cni: $(CNI_BINS)

$(CNI_BINS) &: go.mod go.sum
	@mkdir -p $(CNI_BIN)
	CGO_ENABLED=0 $(GO) build -o $(CNI_BIN)/ $(CNI_PKGS)
	@touch $(CNI_BINS)

# nerdctl v2.2.1 from ../shared/third_party (hack/nerdctl.sh) into _output/nerdctl/bin/, for the
# integration tests of nerdctl with this shim.
.PHONY: nerdctl
nerdctl:
	@hack/nerdctl.sh

# crictl and critest v1.37.0 and the ginkgo CLI from the module proxy (hack/crictl.sh) into
# _output/crictl/bin/, for the CRI tests and critest.
.PHONY: crictl
crictl:
	@hack/crictl.sh

# The integration tests alone, with the summary of hack/test.sh:
#   make integration TESTFLAGS='-run TestRunEcho/runc'
.PHONY: integration
integration: containerd cni nerdctl crictl
	@PKGS=./integration/ hack/test.sh

# The guest kernel and initramfs (DESIGN.md §5, §7; hack/guest.sh):
#   guest        make guest [ARCH=amd64|arm64]: _output/guest/<arch>/{kernel,rootfs} from our kernel
#                (make kernel), a static runc and the static agent (rootfs: the read-only ext4
#                root disk the kernel boots from, no initramfs), and the fallback
#                _output/guest/<arch>/debian/{kernel,initrd} from Debian's kernel package and its
#                modules (needs root the first time: apt)
#   kernel       make kernel [ARCH=amd64|arm64]: the guest kernel from Debian's linux-source-6.12
#                and guest/kconfig/, into _output/kernel/<arch>/ (hack/kernel.sh; cached by
#                source version and config in KERNEL_CACHE, default /var/cache/containerd-vz/kernel)
#   guest-deps   the Debian packages guest needs for ARCH (cross compiler, libseccomp, QEMU)
#   runc-static  the static runc alone, into _output/runc/<arch>/runc
#   guest-check  rebuild the image of ARCH and fail unless it is byte-identical (reproducibility)
HOSTARCH := $(shell $(GO) env GOHOSTARCH)
ARCH ?= $(HOSTARCH)

.PHONY: guest
guest:
	@hack/guest.sh all $(ARCH)

.PHONY: kernel
kernel:
	@hack/kernel.sh $(ARCH)

.PHONY: guest-deps
guest-deps:
	@hack/guest.sh deps $(ARCH)

.PHONY: runc-static
runc-static: guest-deps
	@hack/guest.sh runc $(ARCH)

.PHONY: guest-check
guest-check:
	@hack/guest.sh check $(ARCH)

# macOS (DESIGN.md §5, §8). Off a Mac the vz backend cannot be compiled (cgo, the macOS SDK):
# darwin-nocgo builds what needs no cgo, darwin-check type-checks the rest. The guest's packages
# are Linux-only by design and are left out.
DARWIN_GUEST_PKGS := ./agent/...,./cmd/vz-agent
# The snapshotter (issue [5/5]) joins when its command exists.
SNAPSHOTTER_CMD := $(filter containerd-vz-snapshotter,$(CMDS))
DARWIN_NOCGO_PKGS := ./cmd/containerd-shim-vz-v1 ./shim/... ./transport/... ./api/... ./vm/... \
	$(if $(SNAPSHOTTER_CMD),./cmd/containerd-vz-snapshotter) \
	$(if $(wildcard snapshotter/*.go snapshotter/*/*.go),./snapshotter/...)

.PHONY: darwin-nocgo
darwin-nocgo:
	GOOS=darwin GOARCH=arm64 CGO_ENABLED=0 $(GO) build $(DARWIN_NOCGO_PKGS)
	GOOS=darwin GOARCH=arm64 CGO_ENABLED=0 $(GO) vet $(DARWIN_NOCGO_PKGS)

.PHONY: darwin-check
darwin-check: darwin-nocgo
	$(GO) run ./hack/darwincheck -arch arm64,amd64 -exclude $(DARWIN_GUEST_PKGS) ./...

# On a Mac: the host binaries with cgo for the host arch; the shim is signed (ad hoc) with the
# virtualization entitlement, without which VZ refuses every configuration.
.PHONY: darwin
darwin:
	@if [ "$$(uname -s)" != Darwin ]; then \
		echo "make darwin: builds and signs the macOS binaries; run it on a Mac (here, make darwin-check type-checks them)" >&2; \
		exit 1; \
	fi
	@mkdir -p $(BIN)
	CGO_ENABLED=1 $(GO) build -o $(BIN)/ ./cmd/containerd-shim-vz-v1 $(if $(SNAPSHOTTER_CMD),./cmd/containerd-vz-snapshotter)
	codesign --entitlements hack/vz.entitlements --force -s - $(BIN)/containerd-shim-vz-v1

# make install [PREFIX=/usr/local] [DESTDIR=]: what was built, nothing is built here. The guest
# directory is where the shim looks by default (shim/options.go, defaultGuestDir):
# <shim>/../share/containerd-vz/guest/<arch>/. Portable install(1) flags only (BSD on macOS).
PREFIX ?= /usr/local
DESTDIR ?=
INSTALL_BINS := containerd-shim-vz-v1 containerd-vz-snapshotter

.PHONY: install
install:
	@bins=""; for b in $(INSTALL_BINS); do [ ! -f "$(BIN)/$$b" ] || bins="$$bins $(BIN)/$$b"; done; \
	if [ -z "$$bins" ]; then \
		echo "make install: no binaries in $(BIN): run make build (Linux) or make darwin (macOS) first" >&2; \
		exit 1; \
	fi; \
	install -d "$(DESTDIR)$(PREFIX)/bin"; \
	for b in $$bins; do echo "install $$b $(DESTDIR)$(PREFIX)/bin/"; install -m 0755 "$$b" "$(DESTDIR)$(PREFIX)/bin/"; done
	@if [ -d "$(CNI_BIN)" ]; then \
		dest="$(DESTDIR)$(PREFIX)/libexec/containerd-vz/cni"; \
		echo "install $(CNI_BIN)/* $$dest/"; \
		install -d "$$dest"; \
		install -m 0755 $(CNI_BIN)/* "$$dest/"; \
	fi
	@for d in _output/guest/*/ _output/guest/*/debian/; do \
		[ -f "$$d/kernel" ] || continue; \
		sub=$${d#_output/guest/}; \
		boot=initrd; [ ! -f "$$d/rootfs" ] || boot=rootfs; \
		if [ ! -f "$$d/$$boot" ]; then echo "make install: $$d has a kernel but no initrd or rootfs" >&2; exit 1; fi; \
		dest="$(DESTDIR)$(PREFIX)/share/containerd-vz/guest/$${sub%/}"; \
		echo "install $${d}kernel $${d}$$boot $$dest/"; \
		install -d "$$dest"; \
		rm -f "$$dest/initrd" "$$dest/rootfs"; \
		install -m 0644 "$$d/kernel" "$$d/$$boot" "$$dest/"; \
		if [ -f "$$d/runc-features.json" ]; then install -m 0644 "$$d/runc-features.json" "$$dest/"; fi; \
	done
