#!/usr/bin/env bash
# Self-test of the istio-interop harness, independent of trustplane: builds
# `cacerts` directories with openssl, then checks that Istio's CA code accepts
# or rejects them as expected and that the workload certificates it issues
# verify (or not) under the trust bundles of a root rotation.
#
#   tests/interop/istio/selftest.sh       # one line per check; exit 1 on any unexpected result
#
# ISTIO_INTEROP=/path/to/istio-interop skips the build.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="${ISTIO_INTEROP:-$("$HERE/build.sh")}"
command -v openssl >/dev/null || { echo "error: openssl is needed" >&2; exit 1; }

T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
ID="spiffe://cluster.local/ns/default/sa/x"

# --- certificate factory -----------------------------------------------------
cat > "$T/ext.cnf" <<'EOF'
[root]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

# What trustplane issues to a cluster: no extendedKeyUsage at all.
[int]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectAltName = URI:spiffe://cluster.local
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[int_eku_client]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://cluster.local
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[int_eku_both]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://cluster.local
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; } # PKCS#8 PEM

# mkroot NAME: self-signed root CA -> $T/NAME.{key,pem}
mkroot() {
  newkey "$T/$1.key"
  openssl req -new -key "$T/$1.key" -subj "/O=trustplane-selftest/CN=$1" -out "$T/$1.csr" 2>/dev/null
  openssl x509 -req -in "$T/$1.csr" -signkey "$T/$1.key" -days 3650 -sha256 \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$T/ext.cnf" -extensions root -out "$T/$1.pem" 2>/dev/null
}

# mkint NAME ROOT SECTION: intermediate CA signed by ROOT -> $T/NAME.{key,pem}
mkint() {
  newkey "$T/$1.key"
  openssl req -new -key "$T/$1.key" -subj "/O=trustplane-selftest/CN=$1" -out "$T/$1.csr" 2>/dev/null
  openssl x509 -req -in "$T/$1.csr" -CA "$T/$2.pem" -CAkey "$T/$2.key" -days 365 -sha256 \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$T/ext.cnf" -extensions "$3" -out "$T/$1.pem" 2>/dev/null
}

# mkcacerts DIR INT ROOT BUNDLE_ROOT...: the four files of an Istio `cacerts` Secret
mkcacerts() {
  local dir="$T/$1" int="$2" root="$3"; shift 3
  mkdir -p "$dir"
  cp "$T/$int.pem" "$dir/ca-cert.pem"
  cp "$T/$int.key" "$dir/ca-key.pem"
  cat "$T/$int.pem" "$T/$root.pem" > "$dir/cert-chain.pem"
  : > "$dir/root-cert.pem"
  for r in "$@"; do cat "$T/$r.pem" >> "$dir/root-cert.pem"; done
}

mkroot rootA; mkint intA rootA int
mkroot rootB; mkint intB rootB int
mkint intA_eku_client rootA int_eku_client
mkint intA_eku_both rootA int_eku_both
cat "$T/rootA.pem" "$T/rootB.pem" > "$T/bundleAB.pem"

mkcacerts cacertsA intA rootA rootA                        # stable: signed by A, bundle {A}
mkcacerts cacertsA_trustB intA rootA rootA rootB           # trust-new: signed by A, bundle {A,B}
mkcacerts cacertsB_trustA intB rootB rootA rootB           # sign-new: signed by B, bundle {A,B}
mkcacerts cacertsB intB rootB rootB                        # retire-old: signed by B, bundle {B}
mkcacerts cacertsA_eku_client intA_eku_client rootA rootA
mkcacerts cacertsA_eku_both intA_eku_both rootA rootA
mkcacerts cacertsA_wrongkey intA rootA rootA
cp "$T/intB.key" "$T/cacertsA_wrongkey/ca-key.pem"
mkcacerts cacertsA_rootB intA rootA rootB                  # root-cert.pem does not hold A

# --- checks ------------------------------------------------------------------
failures=0
# check NAME want(ok|fail) PATTERN -- command...
#   passes when the exit status is as wanted and the output contains PATTERN
check() {
  local name="$1" want="$2" pattern="$3"; shift 4
  local out rc=0
  out="$("$@" 2>&1)" || rc=$?
  local got=ok; [[ $rc -eq 0 ]] || got=fail
  local line; line="$(printf '%s' "$out" | grep -v '^\s*$' | tail -n1 || true)"
  [[ -n "$line" ]] || line="(no output)"
  if [[ "$got" == "$want" && "$out" == *"$pattern"* ]]; then
    echo "PASS $name (expected $want): $line"
  else
    echo "FAIL $name (expected $want, got $got rc=$rc): $line"
    failures=$((failures + 1))
  fi
}

check "version links the pinned Istio commit" ok "istio 1." -- "$BIN" version

check "sign: istiod loads cacerts A (no EKU intermediate)" ok "OK " -- \
  "$BIN" sign --cacerts "$T/cacertsA" --spiffe-id "$ID" --out "$T/leafA.pem" --ttl 1h
check "verify leaf A under root-cert.pem {A}" ok "OK " -- \
  "$BIN" verify --chain "$T/leafA.pem" --roots "$T/cacertsA/root-cert.pem" --spiffe-id "$ID"
check "verify leaf A under bundle {A,B}" ok "OK " -- \
  "$BIN" verify --chain "$T/leafA.pem" --roots "$T/bundleAB.pem" --spiffe-id "$ID"
check "verify leaf A under bundle {B} is rejected" fail "certificate signed by unknown authority" -- \
  "$BIN" verify --chain "$T/leafA.pem" --roots "$T/rootB.pem"
check "verify leaf A with another SPIFFE ID is rejected" fail "want exactly" -- \
  "$BIN" verify --chain "$T/leafA.pem" --roots "$T/rootA.pem" --spiffe-id "spiffe://cluster.local/ns/default/sa/y"

check "sign: intermediate with EKU clientAuth only is rejected by istiod" fail "incompatible key usage" -- \
  "$BIN" sign --cacerts "$T/cacertsA_eku_client" --spiffe-id "$ID" --out "$T/leaf_bad.pem"
check "sign: intermediate with EKU serverAuth+clientAuth is accepted" ok "OK " -- \
  "$BIN" sign --cacerts "$T/cacertsA_eku_both" --spiffe-id "$ID" --out "$T/leaf_both.pem"
check "sign: ca-key.pem not matching ca-cert.pem is rejected" fail "does not match" -- \
  "$BIN" sign --cacerts "$T/cacertsA_wrongkey" --spiffe-id "$ID" --out "$T/leaf_bad.pem"
check "sign: root-cert.pem without the issuing root is rejected" fail "unknown authority" -- \
  "$BIN" sign --cacerts "$T/cacertsA_rootB" --spiffe-id "$ID" --out "$T/leaf_bad.pem"

# Root rotation A -> B, as DESIGN.md's phases write cacerts.
check "rotation trust-new: signed by A, root-cert.pem {A,B} accepted" ok "OK " -- \
  "$BIN" sign --cacerts "$T/cacertsA_trustB" --spiffe-id "$ID" --out "$T/leafA2.pem"
check "rotation sign-new: signed by B, root-cert.pem {A,B} accepted" ok "OK " -- \
  "$BIN" sign --cacerts "$T/cacertsB_trustA" --spiffe-id "$ID" --out "$T/leafB.pem"
check "rotation sign-new: leaf B verifies under {A,B}" ok "OK " -- \
  "$BIN" verify --chain "$T/leafB.pem" --roots "$T/cacertsB_trustA/root-cert.pem" --spiffe-id "$ID"
check "rotation sign-new: leaf A (trust-new) still verifies under {A,B}" ok "OK " -- \
  "$BIN" verify --chain "$T/leafA2.pem" --roots "$T/cacertsB_trustA/root-cert.pem" --spiffe-id "$ID"
check "rotation retire-old: signed by B, root-cert.pem {B} accepted" ok "OK " -- \
  "$BIN" sign --cacerts "$T/cacertsB" --spiffe-id "$ID" --out "$T/leafB2.pem"
check "rotation retire-old: leaf A rejected under {B}" fail "unknown authority" -- \
  "$BIN" verify --chain "$T/leafA2.pem" --roots "$T/cacertsB/root-cert.pem"

if [[ $failures -ne 0 ]]; then
  echo "selftest: $failures unexpected result(s)" >&2
  exit 1
fi
echo "selftest: all checks passed ($BIN)" >&2
