#!/bin/sh
# Run inside the builder stage of cache-node/Dockerfile and operator/Dockerfile: the Debian
# packages the project's CMake build needs (the same set as the Makefile's DEBIAN_PACKAGES,
# minus tests, benchmarks and browsers), then drops the apt lists.
set -eu
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  build-essential cmake ninja-build pkg-config ca-certificates \
  libpistache-dev libcpprest-dev prometheus-cpp-dev nlohmann-json3-dev libgtest-dev libgmock-dev \
  libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev libxxhash-dev libssl-dev \
  npm
rm -rf /var/lib/apt/lists/*
