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

# The Debian package: a release build, then target/debian/viewcounter_*.deb (README: "Install").
deb:
    command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
    cargo deb

# Everything CI runs.
ci:
    bash .ci/run

# viewcounter vs nginx+nchan, side by side; writes BENCHMARKS.md (scale with STREAMS=, DURATION=).
bench:
    bash bench/run.sh

# Cluster mode (issue 14): 3 nodes on one redis-server against one node, 15,000 streams;
# writes its section of BENCHMARKS.md (scale with STREAMS=, DURATION=, ROUNDS=).
bench-cluster:
    bash bench/cluster.sh

# Fuzz the parsers and encoders with cargo-fuzz, SECONDS per target, one target at a time
# (e.g. `just fuzz 300 sse`). Reads the committed seeds in fuzz/corpus/, grows its own corpus
# in fuzz/target/corpus/ (not committed); crashes land in fuzz/artifacts/<target>/.
fuzz seconds="60" targets="slug reader_id sse client_ip direct_head import_file":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && for t in {{targets}}; do mkdir -p "target/corpus/$t" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "target/corpus/$t" "corpus/$t" -- -max_total_time={{seconds}} || exit 1; done

# Fault tests that need root: full and read-only disk (tmpfs), a client vanishing in a network
# namespace, memory after churn (~2.5 min). The quick fault tests run in `cargo test`.
faults *scenarios:
    bash faults/run.sh {{scenarios}}
