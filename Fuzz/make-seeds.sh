#!/usr/bin/env bash
# Regenerates the generated seeds of Fuzz/corpus/ (files named gen-*): copies of example-repo/'s
# files, CEL expressions of the conformance vectors, and notes, signatures and allowed_signers files
# signed by a throwaway key made here with ssh-keygen (only signatures and public keys are kept).
# Hand-written seeds (other names) are left alone. Needs ssh-keygen and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=Fuzz/corpus
mkdir -p "$corpus"/{spec,cel,audit-note,sshsig,allowed-signers}
rm -f "$corpus"/*/gen-*
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# spec: every YAML file of the example repository and the shipped policies.
for file in example-repo/gantry.yaml example-repo/identities/actors.yaml example-repo/policies/*.yaml \
            example-repo/templates/*.yaml example-repo/environments/*.yaml policies/*.yaml; do
  cp "$file" "$corpus/spec/gen-$(echo "$file" | tr '/' '-')"
done

# cel: short expressions of the conformance vectors (one in five), and the example policies'.
python3 - "$corpus/cel" <<'EOF'
import glob, hashlib, json, os, sys
out = sys.argv[1]
expressions = []
for path in sorted(glob.glob("Tests/Fixtures/cel-conformance/*.json")):
    for section in json.load(open(path)).get("sections", []):
        for test in section.get("tests", []):
            expr = test.get("expr", "")
            if 0 < len(expr.encode()) <= 200 and expr not in expressions:
                expressions.append(expr)
chosen = expressions[::5] + [
    "env != null && env.class == 'preview'",
    "env.spec.services.all(s, env.spec.services[s].replicas <= 2)",
    "change.files.exists(f, f.matches('^infra/(a|aa)+$'))",
    "'%s: %.3f %d %x'.format(['x', 1.0, -3, 255])",
    "s.replace('l', s + s, 3).split(',').map(x, x.trim().upperAscii()).join('-')",
    "l.map(a, l.map(b, l.map(c, a + b + c))).size() > 0",
    "m.all(k, has(m.a) || k in m) && m[2] == 'b' && b.size() == 7",
    "timestamp('2025-01-01T00:00:00Z') + duration('72h') < now && now.getHours('Europe/Paris') >= 0",
    "u + 1u == 43u && i * -1 == 42 && d / 0.0 > 1e308 && int('9223372036854775807') > 0",
    "[1, [2, {'k': [3u, 4.5, b'\\x00\\xff', null, true]}]][1][1].k[2] == b'\\000\\377'",
    "commit.trailers['On-Behalf-Of'] == onBehalfOf && actor.teams.exists_one(t, t == 'payments')",
    "dyn(clone) == null ? branch.name.lastIndexOf('/') : clone.from.class.charAt(0)",
]
for expr in chosen:
    name = "gen-" + hashlib.sha1(expr.encode()).hexdigest()[:12]
    open(os.path.join(out, name), "w").write(expr)
print(f"cel: {len(chosen)} expressions")
EOF

# A throwaway signing key; only its public half and signatures end up in the corpus.
ssh-keygen -q -t ed25519 -N '' -C claude@payments -f "$work/key"
ssh-keygen -q -t ed25519 -N '' -C alice@example.com -f "$work/other"
pub=$(cut -d' ' -f1-2 "$work/key.pub")
other=$(cut -d' ' -f1-2 "$work/other.pub")
sign() { ssh-keygen -q -Y sign -n "$1" -f "$work/key" "$2" && cat "$2.sig"; }
unarmor() { grep -v -- '-----' | tr -d '\n' | base64 -d; }

# audit-note: two chained records as Gantry writes them, signed with ssh-keygen (-n gantry-audit).
record() { # seq event prev [field lines...]
  local seq=$1 event=$2 prev=$3; shift 3
  { printf 'gantry-audit: 1\nseq: %s\nevent: %s\nat: 2025-01-01T00:00:00.000Z\n' "$seq" "$event"
    for field in "$@"; do printf '%s\n' "$field"; done
    printf 'prev: %s\n' "$prev"; } > "$work/record$seq"
  sign gantry-audit "$work/record$seq" > "$work/record$seq.signature"
  cat "$work/record$seq" "$work/record$seq.signature" > "$work/record$seq.text"
}
record 1 admitted none "environment: web" "branch: main" "commit: $(printf 'ab%.0s' {1..20})" \
  "actor: claude@payments" "actor-kind: agent" "on-behalf-of: alice@example.com" "rule: policy preview-limits: pass" "policy-revision: none"
record 2 applied "sha256:$(sha256sum "$work/record1.text" | cut -d' ' -f1)" "environment: web" "branch: main" \
  "commit: $(printf 'ab%.0s' {1..20})" "detail: a \\\\ b \\n c \\u{2d}----"
{ cat "$work/record1.text"; printf '\n'; cat "$work/record2.text"; } > "$corpus/audit-note/gen-two-records"
cp "$work/record1.text" "$corpus/audit-note/gen-one-record"
{ cat "$work/record2.text"; printf '\n%%%%\ngantry audit: applied #2\n\ngantry-audit head: seq 2 sha256:%064d\n' 0; } > "$corpus/audit-note/gen-head-message"
{ sed 's/^seq: 1$/seq: 7/' "$work/record1.text"; printf '\ntrailing text that is not a record\n'; } > "$corpus/audit-note/gen-edited"

# sshsig: a signature (armored and as its binary blob), a public key line, a private key's blob.
printf 'tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nfuzz\n' > "$work/message"
sign git "$work/message" > "$corpus/sshsig/gen-armored"
unarmor < "$corpus/sshsig/gen-armored" > "$corpus/sshsig/gen-blob"
printf '%s claude@payments\n%s\n' "$pub" "$other" > "$corpus/sshsig/gen-public-keys"
ssh-keygen -q -t ed25519 -N '' -C spare -f "$work/spare"  # a key that signs nothing in the corpus
unarmor < "$work/spare" > "$corpus/sshsig/gen-private-key-blob"

# allowed-signers: allowed_signers, %%, the signature of the commit the target writes, %%, its message.
message=$'Fix the status page\n\nAgent: claude\nOn-Behalf-Of: alice@example.com\nTask: T-42\n'
stamp='gantry-fuzz <fuzz@localhost> 1735689600 +0000'
printf 'tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor %s\ncommitter %s\n\n%s' "$stamp" "$stamp" "$message" > "$work/payload"
sign git "$work/payload" > "$work/payload.signature"
signers=$(printf '# identities/allowed_signers\nclaude@payments,"agent@*" namespaces="git,file",valid-after="20240101",valid-before="20300101Z" %s\nalice@example.com %s alice\n*@example.com cert-authority %s\nbob@example.com ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ==\n' "$pub" "$other" "$other")
{ printf '%s\n%%%%\n' "$signers"; cat "$work/payload.signature"; printf '\n%%%%\n%s' "$message"; } > "$corpus/allowed-signers/gen-signed-commit"
{ printf '%s\n%%%%\n' "$signers"; unarmor < "$work/payload.signature"; printf '\n%%%%\n%s' "$message"; } > "$corpus/allowed-signers/gen-signed-commit-blob"
{ printf 'claude@payments valid-after="20990101" %s\n%%%%\n' "$pub"; cat "$work/payload.signature"; printf '\n%%%%\n%s' "$message"; } > "$corpus/allowed-signers/gen-not-yet-valid"
printf '%s\n%%%%\n\n%%%%\nUnsigned\n\nOn-Behalf-Of: a\nOn-Behalf-Of: b\n' "$signers" > "$corpus/allowed-signers/gen-unsigned"

echo "seeds: $(find "$corpus" -type f | wc -l) files, $(du -sk "$corpus" | cut -f1) KiB"
