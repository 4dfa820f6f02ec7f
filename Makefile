# kvcache: the two commands are `make run` and `make test`; both set up a fresh Debian
# bookworm machine themselves (`make deps`), build, then run or test. `make help` lists all.
SHELL := /bin/bash
.DEFAULT_GOAL := help

BUILD_DIR ?= build
JOBS ?= $(shell nproc)
LISTEN ?= 0.0.0.0:8080
DATA_DIR ?= ./data
LOCALK8S_DIR ?= $(abspath $(BUILD_DIR))/localk8s-state

# Debian packages the build, the tests and the benchmarks need. Go (1.26) and Node.js 20 with
# npm come with the machine (Debian's npm would conflict with that Node.js).
DEBIAN_PACKAGES := \
  build-essential cmake ninja-build pkg-config git ca-certificates curl \
  libpistache-dev libcpprest-dev libboost1.74-dev prometheus-cpp-dev nlohmann-json3-dev libgtest-dev \
  libgmock-dev libbenchmark-dev libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev \
  libxxhash-dev libssl-dev clang clang-format libclang-rt-14-dev \
  python3 python3-venv python3-pytest python3-requests python3-selenium python3-yaml \
  chromium chromium-driver \
  wrk nginx-light webdis redis-server redis-tools \
  iproute2 iptables nftables containernetworking-plugins bubblewrap conntrack util-linux \
  python3-kubernetes prometheus

.PHONY: help deps build test test-unit test-integration run run-node bench bench-persist fuzz clean format \
  localk8s localk8s-bins test-localk8s conformance-localk8s localk8s-up localk8s-down images test-images test-e2e-long

help: ## Show the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

deps: ## Install missing Debian packages and the test venv (idempotent)
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	else \
	  echo "Debian packages: all present"; \
	fi
	@command -v npm >/dev/null || { echo "npm (Node.js 20) is missing: it comes with the machine image" >&2; exit 1; }
	@tests/integration/setup_venv.sh $(BUILD_DIR)/venv

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

# Tiers after unit/integration/fuzz that need root and a localk8s (each test holds
# /tmp/localk8s.lock itself); a tier with no tests registered yet is skipped, not an error.
CLUSTER_TIERS := localk8s kube e2e chart monitoring

build: deps $(BUILD_DIR)/build.ninja ## Build everything into build/bin/ (C++, localk8s + pinned upstream)
	cmake --build $(BUILD_DIR) -j $(JOBS)
	@$(MAKE) --no-print-directory localk8s-bins

test: build ## Build and run every test (unit, integration, fuzz, then localk8s, kube, e2e, ...)
	cd $(BUILD_DIR) && ctest --output-on-failure -L unit -j $(JOBS)
	cd $(BUILD_DIR) && ctest --output-on-failure -L integration
	cd $(BUILD_DIR) && ctest --output-on-failure -L fuzz
	@set -e; cd $(BUILD_DIR) && for tier in $(CLUSTER_TIERS); do \
	  echo "== ctest -L $$tier"; ctest --output-on-failure --no-tests=ignore -L "^$$tier\$$"; \
	done

test-unit: build ## Only the unit tests
	cd $(BUILD_DIR) && ctest --output-on-failure -L unit -j $(JOBS)

test-integration: build ## Only the black-box tests against the real binary
	cd $(BUILD_DIR) && ctest --output-on-failure -L integration

run: build ## Local mode (root): localk8s, the operator by Helm, a 3x1 KVCache; prints how to use it; Ctrl-C stops all
	@exec tests/e2e/local_mode.sh $(BUILD_DIR)/bin $(LOCALK8S_DIR)

run-node: build ## Run one node on :8080 with data in ./data, no Kubernetes (Ctrl-C stops it)
	@echo "kvcache-node on $(LISTEN), data in $(DATA_DIR). Try, from another shell:"
	@echo "  curl -i -X PUT --data-binary 'hello' http://127.0.0.1:8080/v1/greeting"
	@echo "  curl -i http://127.0.0.1:8080/v1/greeting"
	@echo "  curl -i -X PUT --data-binary 'soon gone' 'http://127.0.0.1:8080/v1/temp?ttl=30'"
	@echo "  curl -s 'http://127.0.0.1:8080/v1?prefix=g'"
	@echo "  curl -i -X DELETE http://127.0.0.1:8080/v1/greeting"
	@echo "  curl -s http://127.0.0.1:8080/metrics | grep kvcache_node_keys"
	@echo "  open http://127.0.0.1:8080/docs (API reference with try-it-out)"
	exec $(BUILD_DIR)/bin/kvcache-node --listen $(LISTEN) --data-dir $(DATA_DIR)

bench: build ## Side-by-side benchmark against nginx and webdis+redis (see bench/README.md)
	bench/run.sh $(BUILD_DIR)/bin/kvcache-node

fuzz: build ## Fuzz record decoding and recovery for FUZZ_SECONDS (default 600)
	tests/fuzz/run.sh $(or $(FUZZ_SECONDS),600) $(BUILD_DIR)

bench-persist: build ## PUT throughput by fsync mode, GET p99 during a snapshot (bench/persist.sh)
	bench/persist.sh $(BUILD_DIR)/bin/kvcache-node

localk8s: deps localk8s-bins ## Build only localk8s and the pinned upstream Kubernetes, etcd, CoreDNS, helm, Prometheus, traefik

# Incremental: build.sh skips every binary newer than its sources; go build relinks only when
# an input changed.
localk8s-bins:
	tests/localk8s/upstream/build.sh $(BUILD_DIR)/bin
	cd tests/localk8s && go build -o $(abspath $(BUILD_DIR))/bin/localk8s ./cmd/localk8s

test-localk8s: build ## Only the localk8s tier (root: a real control plane, bridge, iptables)
	cd $(BUILD_DIR) && ctest --output-on-failure -L '^localk8s$$'

conformance-localk8s: build ## The cluster conformance suite on a fresh localk8s (root; tests/localk8s/conformance)
	BIN_DIR=$(abspath $(BUILD_DIR))/bin tests/localk8s/conformance/run.sh

localk8s-up: localk8s ## Run localk8s in the foreground (Ctrl-C stops it and cleans the host)
	flock /tmp/localk8s.lock $(BUILD_DIR)/bin/localk8s up --state-dir $(LOCALK8S_DIR)

localk8s-down: ## Clean up after a crashed localk8s
	$(BUILD_DIR)/bin/localk8s down --state-dir $(LOCALK8S_DIR)

test-e2e-long: build ## The long end-to-end run of every day-2 operation (root; about 8 min)
	cd $(BUILD_DIR) && ctest --output-on-failure -L '^e2e-long$$'

images: ## Build the node and operator images (buildah on a debootstrapped bookworm base; root)
	images/build.sh

test-images: images ## Run the node image with podman and expect 200 from /healthz (root)
	images/test.sh

format: ## clang-format the C++ sources
	find cache-node tests/unit -name '*.cc' -o -name '*.h' | xargs clang-format -i

clean: ## Remove the build directory
	rm -rf $(BUILD_DIR)
