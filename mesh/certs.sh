#!/usr/bin/env bash
# Certificates for zenoh's TLS transport between prscd nodes and zenohd routers.
#
#   mesh/certs.sh OUT_DIR node:eu router:eu backend:bot:app1,app2 ...   # CA (once) + one cert each
#   mesh/certs.sh --rogue OUT_DIR node:eu ...     # same, from a different, untrusted CA
#   mesh/certs.sh --force OUT_DIR node:eu ...     # re-issue the named certs even if valid
#
# Roles: the zenoh ACLs (mesh/README.md, threat model) name who may do what by the
# certificate's common name (CN), which is also the file name:
#   node:<MESH_ID>                 CN node-<MESH_ID>: one per node (the node key space)
#   router:<name>                  CN router-<name>: a zenohd router
#   backend:<name>:<app>[,<app>]   CN backend-<name>: a backend scoped to those apps;
#                                  the apps are written into the certificate (OU app:<id>)
#                                  and the ACL policy the routers need is printed
# A bare <name> (no role) still makes a certificate with CN <name>; no shipped ACL
# names it, so with ACLs on it may do nothing.
#
# Writes into OUT_DIR:
#   ca.pem, ca.key           the mesh CA (created if missing, reused otherwise)
#   <cn>.pem, <cn>.key       a certificate signed by the CA, and its key
#   --rogue: rogue-ca.pem, rogue-ca.key and <name>.pem/<name>.key signed by the rogue CA
#            (same subject as the real CA, different key: a cert that *looks* right
#             but must be refused). Use a separate OUT_DIR for rogue certs.
#
# Keys are ECDSA P-256 in PKCS#8 PEM ("BEGIN PRIVATE KEY"), which zenoh-link-tls 1.10.2
# loads (it tries PKCS#1 RSA, then PKCS#8, then SEC1 EC) and signs with via rustls/ring.
# Each leaf cert is usable as both TLS server and TLS client certificate (mTLS):
#   basicConstraints CA:FALSE, keyUsage digitalSignature, extendedKeyUsage serverAuth+clientAuth,
#   SANs: DNS:localhost, DNS:<name>, IP:127.0.0.1 .. IP:127.0.0.19, IP:::1, plus $CERT_EXTRA_SANS.
# The 127.0.0.x SANs matter: zenoh verifies the server name against the endpoint host
# (tls/127.0.0.11:7447 -> IP SAN 127.0.0.11), so the router certs must carry the router IPs
# (127.0.0.11-13 in mesh/three-regions.sh) and the node IPs (127.0.0.1-9) for p2p over TLS.
#
# Environment:
#   CERT_EXTRA_SANS   extra SANs, comma-separated, e.g. "DNS:eu.example.com,IP:10.0.0.5"
#   CA_DAYS           CA validity (default 3650)
#   CERT_DAYS         leaf validity (default 825)
#   CA_SUBJECT        CA subject (default "/O=prscd/CN=prscd mesh CA")
#
# Idempotent: an existing <name>.pem that verifies against the CA, and is valid for at
# least another day, is kept (with --force it is re-issued).
set -euo pipefail

log() { echo "certs: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ROGUE=0
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rogue) ROGUE=1; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage
OUT="$1"; shift

if ! command -v openssl >/dev/null 2>&1; then
    log "openssl missing; installing with apt"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl
fi

CA_DAYS="${CA_DAYS:-3650}"
CERT_DAYS="${CERT_DAYS:-825}"
CA_SUBJECT="${CA_SUBJECT:-/O=prscd/CN=prscd mesh CA}"

mkdir -p "$OUT"
chmod 700 "$OUT" 2>/dev/null || true
umask 077

if [ "$ROGUE" -eq 1 ]; then
    CA_PEM="$OUT/rogue-ca.pem"; CA_KEY="$OUT/rogue-ca.key"
else
    CA_PEM="$OUT/ca.pem"; CA_KEY="$OUT/ca.key"
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

new_key() { # PKCS#8 ECDSA P-256
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

# The CN (and file name) of a role:name argument.
cn_of() {
    case "$1" in
        node:*) echo "node-${1#node:}" ;;
        router:*) echo "router-${1#router:}" ;;
        backend:*) local rest="${1#backend:}"; echo "backend-${rest%%:*}" ;;
        *) echo "$1" ;;
    esac
}

# --- CA -------------------------------------------------------------------------
if [ -s "$CA_PEM" ] && [ -s "$CA_KEY" ]; then
    # the key must match the certificate
    if [ "$(openssl x509 -in "$CA_PEM" -noout -pubkey)" != "$(openssl pkey -in "$CA_KEY" -pubout)" ]; then
        die "$CA_PEM and $CA_KEY do not match; remove both to make a new CA"
    fi
    openssl x509 -in "$CA_PEM" -noout -checkend 86400 >/dev/null \
        || die "$CA_PEM expires within a day; remove $CA_PEM and $CA_KEY (and re-issue every cert)"
    log "using CA $CA_PEM"
else
    if [ -e "$CA_PEM" ] || [ -e "$CA_KEY" ]; then die "only one of $CA_PEM / $CA_KEY exists; remove it"; fi
    if [ "$FORCE" -eq 0 ]; then
        for arg in "$@"; do
            name="$(cn_of "$arg")"
            if [ -e "$OUT/$name.pem" ]; then
                die "$OUT/$name.pem exists but $CA_PEM does not: it was issued by another CA; use another OUT_DIR or --force"
            fi
        done
    fi
    cat > "$TMP/ca.ext" <<EOF
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    new_key "$CA_KEY"
    openssl req -new -x509 -key "$CA_KEY" -sha256 -days "$CA_DAYS" \
        -subj "$CA_SUBJECT" -config "$TMP/ca.ext" -extensions v3_ca -out "$CA_PEM"
    chmod 644 "$CA_PEM"
    if [ "$ROGUE" -eq 1 ]; then log "made ROGUE (untrusted) CA $CA_PEM"; else log "made CA $CA_PEM"; fi
fi

# --- leaves ---------------------------------------------------------------------
sans_for() {
    local name="$1" sans="DNS:localhost" i
    # a DNS SAN only when the name is a valid hostname
    if [[ "$name" =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$ ]]; then
        [ "$name" = localhost ] || sans="$sans,DNS:$name"
    fi
    for i in $(seq 1 19); do sans="$sans,IP:127.0.0.$i"; done
    sans="$sans,IP:::1"
    if [ -n "${CERT_EXTRA_SANS:-}" ]; then sans="$sans,$CERT_EXTRA_SANS"; fi
    echo "$sans"
}

for arg in "$@"; do
    apps=""
    case "$arg" in
        backend:*:*) rest="${arg#backend:}"; apps="${rest#*:}"
            [[ "$apps" =~ ^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$ ]] || die "bad app list '$apps' in '$arg'" ;;
        backend:*) die "'$arg': a backend needs its apps, backend:<name>:<app>[,<app>]" ;;
        node:* | router:*) ;;
        *:*) die "unknown role in '$arg' (node:, router: or backend:)" ;;
    esac
    name="$(cn_of "$arg")"
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad name '$name' (letters, digits, . _ - only)"
    case "$name" in ca|rogue-ca) die "'$name' is reserved for the CA files" ;; esac
    pem="$OUT/$name.pem"; key="$OUT/$name.key"
    if [ "$FORCE" -eq 0 ] && [ -s "$pem" ] && [ -s "$key" ]; then
        if openssl verify -CAfile "$CA_PEM" "$pem" >/dev/null 2>&1 \
            && openssl x509 -in "$pem" -noout -checkend 86400 >/dev/null \
            && [ "$(openssl x509 -in "$pem" -noout -pubkey)" = "$(openssl pkey -in "$key" -pubout)" ]; then
            log "keeping $pem (valid, signed by $(basename "$CA_PEM"))"
            continue
        fi
        if ! openssl verify -CAfile "$CA_PEM" "$pem" >/dev/null 2>&1; then
            die "$pem exists but is not signed by $CA_PEM (another CA?); use another OUT_DIR or --force"
        fi
        log "re-issuing $pem (expiring or key mismatch)"
    fi
    cat > "$TMP/leaf.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = $(sans_for "$name")
EOF
    new_key "$key"
    subject="/O=prscd"
    for app in ${apps//,/ }; do subject="$subject/OU=app:$app"; done
    openssl req -new -key "$key" -subj "$subject/CN=$name" -out "$TMP/$name.csr" 2>/dev/null
    # random serial (-CAcreateserial would leave a .srl file next to the CA)
    openssl x509 -req -in "$TMP/$name.csr" -CA "$CA_PEM" -CAkey "$CA_KEY" \
        -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$CERT_DAYS" \
        -extfile "$TMP/leaf.ext" -out "$pem" 2>/dev/null
    chmod 644 "$pem"
    openssl verify -CAfile "$CA_PEM" "$pem" >/dev/null || die "issued $pem does not verify"
    if [ "$ROGUE" -eq 1 ]; then log "issued $pem (ROGUE CA: must be refused by the mesh)"; else log "issued $pem"; fi
    if [ -n "$apps" ]; then
        keys=""
        for app in ${apps//,/ }; do keys="$keys\"prscd/$app/*\", \"prscd/$app/*/@member/*\", \"prscd/$app/@node/*\", "; done
        log "$name: add to the routers' access_control, as backend-dev in mesh/regions/tls/router-*.json5:"
        log "  subject { id: \"$name\", cert_common_names: [\"$name\"] }, the four backend-dev rules (-in, -rosters, -nodes, -out)"
        log "  with key_exprs [${keys%, }], and a policy joining them"
    fi
done
