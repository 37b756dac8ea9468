# vfvmm — the two commands a fresh machine needs: `make demo` and `make test`.
# Both install what they need (Debian packages, the testbed kernel and images).

CARGO ?= cargo
# Testbed tests and the demo boot QEMU/TCG; keep them from running in parallel.
TESTBED_THREADS ?= 1

.PHONY: all build deps images test unit-test testbed-test demo bench clean

all: build

build:
	$(CARGO) build --release --workspace --bins

# Host packages the unit tests use (iasl checks the DSDT); build.sh installs the testbed's.
deps:
	@command -v iasl >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq acpica-tools)

images: deps
	bash resources/build.sh

unit-test: deps
	VFVMM_REQUIRE_IASL=1 $(CARGO) test --workspace

testbed-test: build images
	$(CARGO) test -p vfvmm-tests -- --ignored --test-threads=$(TESTBED_THREADS)

test: unit-test testbed-test

demo: build images
	bash tests/testbed/demo.sh

bench: build images
	bash tests/testbed/bench.sh

clean:
	$(CARGO) clean
