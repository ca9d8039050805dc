#!/bin/sh
# One organisation's sharing set-up, once its node answers: apply its example
# policies, then register each partner from the card it published, bound to
# a policy. Idempotent: a partner already registered is left as it is.
# Run by each `<org>-link` service of compose.yaml.
#
#   ORG=cert.example THREATMESH_SERVER=cert.example:7443 \
#   PARTNERS="isp.example=isp-feed police.example=agency-partner" sh deploy/link.sh
set -eu
: "${ORG:?ORG, the org id}"
: "${PARTNERS:?PARTNERS, e.g. \"isp.example=isp-feed police.example=agency-partner\"}"
DATA=${DATA:-/data}
CARDS=${CARDS:-/cards}
tm() { threatmesh -c "$DATA/threatmesh.toml" "$@"; }
tm status --wait 60 >/dev/null
for policy in "$DATA"/policies/*.toml; do
  tm policy apply "$policy"
done
for p in $PARTNERS; do
  partner=${p%%=*}
  policy=${p#*=}
  if tm peer show --partner "$partner" >/dev/null 2>&1; then
    echo "$ORG: $partner already registered"
    continue
  fi
  # The partner's -init service writes its card; wait for it.
  i=0
  while [ ! -f "$CARDS/$partner.card" ]; do
    i=$((i + 1))
    if [ "$i" -gt 120 ]; then echo "$ORG: no card of $partner in $CARDS" >&2; exit 1; fi
    sleep 1
  done
  tm peer add --card "$CARDS/$partner.card" --policy "$policy"
done
echo "$ORG: linked to $PARTNERS"
