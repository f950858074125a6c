#!/usr/bin/env bash
# Runs prefloop on the embedded SQLite default with a ready project: an admin, an annotator, sample pairs.
# Prints the tokens, then serves on http://127.0.0.1:3000 (PREFLOOP_BIND to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFLOOP_DATA_DIR="${PREFLOOP_DATA_DIR:-./prefloop-data}"
cargo build --release --quiet
bin=target/release/prefloop
if ! $bin project list | grep -q "	demo	"; then
  admin=$($bin user add demo-admin --role admin)
  annotator=$($bin user add demo-annotator --role annotator)
  $bin project create demo --budget 200 >/dev/null
  $bin import demo scripts/demo-pairs.jsonl >/dev/null
  printf 'admin token:     %s\nannotator token: %s\n(shown once; kept in %s/demo-tokens.txt)\n' \
    "$admin" "$annotator" "$PREFLOOP_DATA_DIR" | tee "$PREFLOOP_DATA_DIR/demo-tokens.txt"
else
  cat "$PREFLOOP_DATA_DIR/demo-tokens.txt" 2>/dev/null || true
fi
exec $bin serve
