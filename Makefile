# The two commands a user needs are `make demo` and `make test`; both install what they need.
.PHONY: setup demo test perf build images

setup:
	@bash scripts/setup.sh

build: setup
	cargo build --release --workspace

demo: setup
	@echo "==> building septa-agent and septa-cni (release; a first build takes several minutes)"
	cargo build --release -p agent -p cni
	@echo "==> building the demo"
	cargo build --release -p septa-tests --bin septa-demo
	@echo "==> running the demo"
	./target/release/septa-demo

# OCI archives of the container images under target/images/ (see README "Container images").
images: setup
	@bash scripts/images.sh

test: setup
	@bash scripts/test.sh

perf: setup
	cargo build --release -q -p agent -p cni
	cargo run --release -q -p perf --bin septa-perf -- --out perf/results
	cargo run --release -q -p perf --bin septa-perf-policy -- --out perf/results
	cargo run --release -q -p perf --bin septa-perf-agent -- --out perf/results
	cargo run --release -q -p perf --bin septa-perf-flows -- --out perf/results
	cargo run --release -q -p perf --bin septa-perf-feeds -- --out perf/results
	cargo run --release -q -p perf --bin septa-perf-recommend -- --out perf/results
	cargo run --release -q -p perf --bin septa-perf-dns -- --out perf/results
