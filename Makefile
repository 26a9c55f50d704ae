# Thin wrapper over CMake (as neovim does). The real build is CMakeLists.txt.
BUILD      ?= build
ASAN_BUILD ?= build-asan
CONFIG     ?= examples/quickstart.lua
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build asan run test test-asan unit integration bench clean

all: build

# Install whatever Debian packages in .ci/packages are missing (needs root).
deps:
	@sh .ci/deps

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMG_SANITIZE=ON >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)

run: build
	bash examples/run-quickstart.sh $(BUILD)/moongate $(CONFIG)

# Every test: C unit tests (ctest), busted specs, integration tests (pytest).
test: build
	sh spec/run.sh $(BUILD)

test-asan: asan
	sh spec/run.sh $(ASAN_BUILD)

bench: build
	bash bench/run.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
