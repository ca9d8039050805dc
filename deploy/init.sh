#!/bin/sh
# One organisation's first start: make it once (its CA, keys and config stay
# in $DATA, never leave it), then publish its card where partners read it.
# Run by each `<org>-init` service of compose.yaml; re-running changes
# nothing but the card file.
#
#   ORG=cert.example HOST=cert.example sh deploy/init.sh
set -eu
: "${ORG:?ORG, the org id, e.g. cert.example}"
: "${HOST:?HOST, the host name partners dial}"
DATA=${DATA:-/data}
CARDS=${CARDS:-/cards}
LISTEN=${LISTEN:-0.0.0.0:7443}
ENDPOINT=${ENDPOINT:-$HOST:7443}
if [ ! -f "$DATA/threatmesh.toml" ]; then
  threatmesh init --org "$ORG" --dir "$DATA" --listen "$LISTEN" \
    --endpoint "$ENDPOINT" --dns-name "$HOST" --with-examples
else
  echo "$ORG: already initialised in $DATA"
fi
mkdir -p "$CARDS"
threatmesh -c "$DATA/threatmesh.toml" card export --out "$CARDS/$ORG.card"
