# Run the server with its embedded defaults (demo at http://127.0.0.1:8080).
run:
    cargo run --release

# The whole test suite.
test:
    cargo test

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Everything CI runs.
ci:
    bash .ci/run

# viewcounter vs nginx+nchan, side by side; writes BENCHMARKS.md (scale with STREAMS=, DURATION=).
bench:
    bash bench/run.sh
