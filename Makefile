# tagd: the two commands that matter are `make run` and `make test`.
# Both set up what they need on a fresh Debian machine: the C build tools
# for libjpeg-turbo (cmake, nasm) and the ONNX Runtime library, unpacked
# from the official onnxruntime Python wheel into .ort/.

ORT_VERSION := 1.31.1
ORT_LIB     := .ort/libonnxruntime.so.$(ORT_VERSION)
export ORT_DYLIB_PATH := $(CURDIR)/$(ORT_LIB)

CARGO ?= cargo

.PHONY: run test test-rust test-training lint bench train build-tools onnxruntime clean

## Build and start tagd on ./inbox with the bundled model and ./catalogue.db.
run: build-tools $(ORT_LIB)
	mkdir -p inbox
	$(CARGO) build --release
	./target/release/tagd --model models/fashion-mnist --database sqlite://catalogue.db \
		--onnxruntime $(ORT_LIB) run --watch inbox

## Every test: Rust unit and end-to-end tests (SQLite and Postgres), then
## the training code's tests.
test: test-rust test-training

test-rust: build-tools $(ORT_LIB)
	$(CARGO) test --all-targets

test-training:
	$(MAKE) -C training test

lint: build-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## Throughput and latency against a Pillow + onnxruntime + sqlite3 reference.
bench: build-tools $(ORT_LIB)
	$(CARGO) build --release
	bash benches/run.sh

## Retrain the shipped model from scratch (see training/README.md).
train:
	$(MAKE) -C training train

onnxruntime: $(ORT_LIB)

# libjpeg-turbo is built from source by the turbojpeg crate (cmake, nasm);
# the tests check the systemd unit with systemd-analyze.
build-tools:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v nasm >/dev/null || missing="$$missing nasm"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The official wheel holds the one shared library tagd needs; the library
# does not depend on Python.
$(ORT_LIB):
	mkdir -p .ort/wheel
	python3 -m pip download --quiet --no-deps --only-binary=:all: \
		--python-version 3.11 --platform manylinux_2_28_x86_64 \
		-d .ort/wheel onnxruntime==$(ORT_VERSION)
	python3 -c "import sys, zipfile; \
		wheel = zipfile.ZipFile(sys.argv[1]); \
		name = 'onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION)'; \
		open('$(ORT_LIB)', 'wb').write(wheel.read(name))" .ort/wheel/onnxruntime-$(ORT_VERSION)-*.whl
	rm -rf .ort/wheel
	@echo "ONNX Runtime $(ORT_VERSION): $(ORT_LIB)"

clean:
	$(CARGO) clean
	rm -rf .ort
