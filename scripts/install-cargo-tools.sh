#!/usr/bin/env bash
# Installs the cargo subcommands the checks use, pinned, from crates.io into
# ${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}/bin: cargo-fuzz (scripts/fuzz) and
# cargo-deny (scripts/deny). Idempotent: a tool at its pinned version is kept.
# Prints the bin directory on stdout.
set -euo pipefail

TOOLS="${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}"
declare -A PINNED=([cargo-fuzz]=0.13.2 [cargo-deny]=0.20.2)

for tool in "${!PINNED[@]}"; do
    version="${PINNED[$tool]}"
    sub="${tool#cargo-}"
    if [ -x "$TOOLS/bin/$tool" ] && "$TOOLS/bin/$tool" "$sub" --version 2>/dev/null | grep -q " $version\$"; then
        echo "install-cargo-tools: $tool $version already installed" >&2
        continue
    fi
    echo "install-cargo-tools: installing $tool $version" >&2
    CARGO_TARGET_DIR="$TOOLS/build" cargo install "$tool" --version "=$version" --locked --root "$TOOLS" >&2
done
rm -rf "$TOOLS/build"
echo "$TOOLS/bin"
