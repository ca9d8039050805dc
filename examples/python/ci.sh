#!/usr/bin/env bash
# Runs the Python client against a real node over mutual TLS: an org A
# serving, an org B registered at A as a partner; Python lists A's services
# by reflection, checks their health, publishes as A's publisher, and
# subscribes as B's node, verifying every signature itself.
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

port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$tm" init --org a.example --dir "$work/a" --listen "127.0.0.1:$port" --endpoint "localhost:$port" >/dev/null
"$tm" init --org b.example --dir "$work/b" >/dev/null
A=(-c "$work/a/threatmesh.toml")
"$tm" "${A[@]}" serve >"$work/a.log" 2>&1 &
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
echo "python client: ok"
