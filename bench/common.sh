# What bench/run.sh and bench/instructions.sh share: the build measured, and the attack brand.
# Sourced from the repository's root.

# The build to measure in `bin`: BENCH_BIN (an earlier commit's, for an A/B), or this tree's
# release build.
bench_binary() {
  if [ -n "${BENCH_BIN:-}" ]; then
    bin="$BENCH_BIN"
  else
    cargo build --release --quiet
    bin=target/release/orderguard
  fi
}

# The attack brand in the brands folder $1: the default fraud rules, only the brand-wide
# ceiling raised past the bench's rates. Its API key in `attack_key`.
attack_brand() {
  attack_key="og_bench_attack_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  mkdir -p "$1/benchattack"
  cat > "$1/benchattack/brand.toml" <<TOML
display_name = "Bench"
sms_sender = "Bench"
allowed_countries = ["DE"]
[fraud.rate_limits]
brand = ["10000000/1m"]
[[api_keys]]
id = "bench-attack"
hash = "sha256:$(printf %s "$attack_key" | sha256sum | cut -d' ' -f1)"
TOML
}
