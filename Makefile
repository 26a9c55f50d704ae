# Thin wrapper over CMake (as neovim does). The real build is CMakeLists.txt.
BUILD      ?= build
ASAN_BUILD ?= build-asan
CONFIG     ?= examples/quickstart.lua
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
PREFIX     ?= /usr/local
# DESTDIR (staged installs, packaging) is read by `cmake --install` itself.

.NOTPARALLEL:

.PHONY: all deps deps-test deps-bench build asan run test test-asan unit integration bench \
        install clean

all: build

# Install the missing Debian packages (needs root; never starts or stops a
# service, see .ci/deps): .ci/packages to build and run, plus
# .ci/packages-test for the tests, .ci/packages-bench for the benchmarks.
deps:
	@sh .ci/deps .ci/packages

deps-test:
	@sh .ci/deps .ci/packages .ci/packages-test

deps-bench:
	@sh .ci/deps .ci/packages .ci/packages-bench

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMG_SANITIZE=ON >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)

run: build
	bash examples/run-quickstart.sh $(BUILD)/moongate $(CONFIG)

# make install [PREFIX=/usr/local] [DESTDIR=/staging]: PREFIX/bin/moongate,
# PREFIX/share/moongate/{lua,plugins} (found relative to the binary, so the
# tree can be moved), the man page and the systemd unit (which names
# PREFIX/bin/moongate).
install: build
	cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)
	cmake --install $(BUILD)

# Every test: C unit tests (ctest), busted specs, integration tests (pytest).
test: deps-test build
	sh spec/run.sh $(BUILD)

test-asan: deps-test asan
	sh spec/run.sh $(ASAN_BUILD)

bench: deps-bench build
	bash bench/run.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
