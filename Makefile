# vfvmm — the two commands a fresh machine needs: `make demo` and `make test`.
# Both install what they need (Debian packages, the testbed kernel and images).

CARGO ?= cargo
# Testbed tests and the demo boot QEMU/TCG; keep them from running in parallel.
TESTBED_THREADS ?= 1

.PHONY: all build deps images lint test unit-test fuzz-short fuzz testbed-test demo bench stability clean

all: build

build:
	@echo "make: building vfvmm and vfctl (cargo build --release; about 1 min the first time)"
	$(CARGO) build --release --workspace --bins

# Host packages the unit tests use (iasl checks the DSDT); build.sh installs the testbed's.
deps:
	@command -v iasl >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq acpica-tools)

images: deps
	@echo "make: testbed images (the first time: QEMU 10 and the Debian kernel package, ~130 MB, 1-3 min)"
	bash resources/build.sh

# Formatting (rustfmt.toml) and clippy with warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test: deps
	VFVMM_REQUIRE_IASL=1 $(CARGO) test --workspace

# cargo-fuzz targets (tests/fuzz): HTTP requests, PCI config space (0xCF8, ECAM), MSI-X
# table/PBA, hotplug registers. `make fuzz [FUZZ_SECONDS=60]`; make test runs each briefly.
FUZZ_SECONDS ?= 60
fuzz:
	bash tests/fuzz/run.sh $(FUZZ_SECONDS)
fuzz-short:
	bash tests/fuzz/run.sh 20

testbed-test: build images
	$(CARGO) test -p vfvmm-tests -- --ignored --test-threads=$(TESTBED_THREADS)

test: lint unit-test fuzz-short testbed-test

demo: build images
	bash tests/testbed/demo.sh

bench: build images
	bash tests/testbed/bench.sh

# How often the demo's L2 boot fails in one testbed configuration (see tests/testbed/README.md):
# make stability [RUNS=20] [VMMS="vfvmm qemu"] [L2_CPUS=2] [VFVMM_L1_ACCEL=tcg VFVMM_L1_SMP=1]
RUNS ?= 20
VMMS ?= vfvmm qemu
L2_CPUS ?= 2
stability: build images
	bash tests/testbed/stability.sh $(RUNS) "$(VMMS)" $(L2_CPUS)

clean:
	$(CARGO) clean
