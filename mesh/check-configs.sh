#!/usr/bin/env bash
# Load every zenoh config in mesh/ with zenoh 1.10.2's own parser (the Python
# binding's zenoh.Config.from_file: same zenoh-config crate, unknown keys and bad
# values are errors). Templates (@CERT_DIR@, @NAME@) are filled with dummy values
# first. Needs mesh/install-python.sh (run automatically if the venv is missing).
# Exit status 1 if any file fails.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
PY="$("$HERE/install-python.sh" 2>"$TMP/install.log")" || { cat "$TMP/install.log" >&2; exit 1; }
fail=0
while IFS= read -r f; do
    rel="${f#"$HERE"/}"
    out="$TMP/$(echo "$rel" | tr / _)"
    sed -e "s|@CERT_DIR@|/nonexistent/certs|g" -e "s|@NAME@|node|g" "$f" > "$out"
    if msg="$("$PY" - "$out" 2>&1 <<'PYEOF'
import sys, zenoh
c = zenoh.Config.from_file(sys.argv[1])
print(c.get_json("mode"))
PYEOF
)"; then
        printf 'ok    %-32s mode %s\n' "$rel" "$(tail -n1 <<<"$msg")"
    else
        printf 'FAIL  %-32s %s\n' "$rel" "$(tail -n1 <<<"$msg")"; fail=1
    fi
done < <(find "$HERE" -name '*.json5' | sort)
exit "$fail"
