#!/usr/bin/env bash
# The whole test suite: SQLite always; PostgreSQL too when TEST_DATABASE_URL is set (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets -- --test-threads="${TEST_THREADS:-2}"
