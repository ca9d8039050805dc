#!/usr/bin/env bash
# Runs the Python client against a real node over mutual TLS: an org A
# serving, an org B registered at A as a partner; Python lists A's services
# by reflection, checks their health, publishes as A's publisher, and
# subscribes as B's node, verifying every signature itself. Then A exports a
# STIX 2.1 bundle of every kind and every TLP 2.0 label, and a sighting,
# which OASIS's stix2-validator must pass with no errors.
#
#   examples/python/ci.sh path/to/threatmesh [python]
set -euo pipefail
tm=$(realpath "${1:?usage: ci.sh path/to/threatmesh [python]}")
py=${2:-python3}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
tport=$(free_port)
"$tm" init --org a.example --dir "$work/a" --listen "127.0.0.1:$port" --endpoint "localhost:$port" >/dev/null
"$tm" init --org b.example --dir "$work/b" >/dev/null
"$tm" init --org c.example --dir "$work/c" >/dev/null
A=(-c "$work/a/threatmesh.toml")
THREATMESH__TAXII__LISTEN="127.0.0.1:$tport" "$tm" "${A[@]}" serve >"$work/a.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  if "$tm" "${A[@]}" status >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/a.log"; exit 1; fi
  sleep 0.1
done
"$tm" "${A[@]}" card export --out "$work/a.card" >/dev/null
"$tm" -c "$work/b/threatmesh.toml" card export --out "$work/b.card" >/dev/null
"$tm" "${A[@]}" policy apply "$root/config/policies/isp-feed.toml" >/dev/null
"$tm" "${A[@]}" peer add --card "$work/b.card" --policy isp-feed >/dev/null
"$tm" -c "$work/c/threatmesh.toml" card export --out "$work/c.card" >/dev/null
"$tm" "${A[@]}" policy apply "$root/config/policies/agency-partner.toml" >/dev/null
"$tm" "${A[@]}" peer add --card "$work/c.card" --policy agency-partner >/dev/null

client() {
  local who=$1; shift
  "$py" "$here/threatmesh_client.py" --server "localhost:$port" --ca "$work/a/certs/ca.pem" \
    --cert "$work/$who.pem" --key "$work/$who.key" "$@"
}
cp "$work/a/certs/admin.pem" "$work/admin.pem"; cp "$work/a/certs/admin.key" "$work/admin.key"
cp "$work/a/certs/publisher.pem" "$work/publisher.pem"; cp "$work/a/certs/publisher.key" "$work/publisher.key"
cp "$work/b/certs/node.pem" "$work/b-node.pem"; cp "$work/b/certs/node.key" "$work/b-node.key"

echo "-- reflection (admin certificate)"
client admin services
echo "-- health"
client admin health
echo "-- publish (publisher certificate; each retried under its idempotency key)"
client publisher publish --kind domain --value login-bank.example --tlp GREEN --tag phishing
client publisher publish --kind ipv4 --value 192.0.2.7 --tlp CLEAR
client publisher publish --kind url --value http://dropper.example/x --tlp GREEN
echo "-- subscribe as b.example's node, verifying each envelope with a.example's card"
client b-node subscribe --card "$work/a.card" --count 3 | tee "$work/got.jsonl"
test "$(wc -l <"$work/got.jsonl")" -eq 3
echo "-- STIX 2.1: every kind and every TLP label, checked by OASIS stix2-validator"
cat >"$work/all.jsonl" <<'JSON'
{"kind":"ipv6","value":"2001:db8::7","tlp":"CLEAR","confidence":90,"tags":["scanner"],"kill_chain_phases":["reconnaissance"]}
{"kind":"cidr","value":"198.51.100.0/24","tlp":"AMBER","recipients":["b.example"]}
{"kind":"cidr","value":"2001:db8:1::/48","tlp":"GREEN","jurisdictions":["DE","NL"]}
{"kind":"domain","value":"bank-login.example","tlp":"AMBER+STRICT","recipients":["b.example"]}
{"kind":"url","value":"http://dropper.example/it's\\x","tlp":"RED","recipients":["b.example"],"description":"quote ' and backslash"}
{"kind":"email","value":"ceo@phish.example","tlp":"GREEN","may_forward":true,"hop_limit":2}
{"kind":"sha256","value":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","tlp":"GREEN","valid_until":"2030-01-01T00:00:00Z"}
{"kind":"sha1","value":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","tlp":"CLEAR"}
{"kind":"md5","value":"cccccccccccccccccccccccccccccccc","tlp":"CLEAR","kill_chain_phases":["mitre-attack:execution"]}
JSON
"$tm" "${A[@]}" publish --file "$work/all.jsonl"
# A sighting report too: STIX `sighting` objects go through the validator.
sighted=$("$tm" "${A[@]}" lookup --json 2001:db8::7 | "$py" -c 'import json, sys; print(json.load(sys.stdin)["versions"][0]["id"])')
"$tm" "${A[@]}" sight "$sighted" --count 4 --sector government --country DE >/dev/null
"$tm" "${A[@]}" export --format stix --out "$work/bundle.json"
grep -q '"type":"sighting"' "$work/bundle.json"
"$(dirname "$py")/stix2_validator" "$work/bundle.json" >"$work/validator.txt" 2>&1 || {
  cat "$work/validator.txt"
  echo "stix2-validator found errors"
  exit 1
}
grep -q "STIX JSON: Valid" "$work/validator.txt"
echo "stix2-validator: $(grep -c 'Warning' "$work/validator.txt") warning(s), no errors"
echo "-- TAXII 2.1 with OASIS taxii2-client: each partner gets exactly its policy view"
cp "$work/c/certs/node.pem" "$work/c-node.pem"; cp "$work/c/certs/node.key" "$work/c-node.key"
for who in b c; do
  "$tm" "${A[@]}" export --format stix --partner "$who.example" --out "$work/$who-view.json"
  client "$who-node" taxii --url "https://localhost:$tport/taxii2/" --expect "$work/$who-view.json"
done
if cmp -s <(grep -o '"indicator--[^"]*' "$work/b-view.json" | sort) <(grep -o '"indicator--[^"]*' "$work/c-view.json" | sort); then
  echo "b.example and c.example were given the same view; their policies differ"
  exit 1
fi
echo "python client, STIX and TAXII checks: ok"
