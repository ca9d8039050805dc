#!/usr/bin/env python3
"""A ThreatMesh client in Python, on the official gRPC stack (grpcio).

It connects with ordinary TLS verification of the host it dials (the node's
certificate names its hosts beside its SPIFFE id), presents a certificate of
the org it acts for, and verifies every envelope it receives itself: the
DSSE v1 signature (Ed25519 over PAE(payloadType, payload)) with the origin's
key from its org card, before decoding the indicator.

    threatmesh_client.py --server localhost:7441 --ca CA --cert C --key K services
    threatmesh_client.py ... health
    threatmesh_client.py ... publish --kind domain --value evil.example --tlp GREEN
    threatmesh_client.py ... subscribe --card origin.card --count 3
    threatmesh_client.py ... taxii --url https://localhost:7444/taxii2/ --expect view.json

The stubs are generated from ../../proto at start (grpc_tools.protoc), so
nothing generated is kept in the repository.
"""

import argparse
import base64
import hashlib
import importlib
import json
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PROTO = Path(__file__).resolve().parents[2] / "proto"
INDICATOR_TYPE = "application/vnd.threatmesh.indicator.v1+protobuf"
CARD_TYPE = "application/vnd.threatmesh.org-card.v1+protobuf"


def stubs():
    """Generates the Python stubs of proto/threatmesh/v1 and imports them."""
    from grpc_tools import protoc
    import grpc_tools

    out = Path(tempfile.mkdtemp(prefix="threatmesh-stubs-"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO)) for p in sorted((PROTO / "threatmesh" / "v1").glob("*.proto"))]
    args = ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit("protoc could not compile " + ", ".join(files))
    sys.path.insert(0, str(out))
    mods = {}
    for name in ["envelope_pb2", "exchange_pb2", "exchange_pb2_grpc", "admin_pb2"]:
        mods[name] = importlib.import_module(f"threatmesh.v1.{name}")
    return mods


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(public_key: bytes) -> str:
    """ThreatMesh key id: hex of the first 16 bytes of SHA-256(raw key)."""
    return hashlib.sha256(public_key).digest()[:16].hex()


def verify(env, payload_type: str, keys: dict) -> str:
    """Checks one signature of `env` with a key of `keys` (key id -> raw
    Ed25519 key); returns the key id. Raises ValueError otherwise."""
    if env.payload_type != payload_type:
        raise ValueError(f"payload type {env.payload_type!r}, expected {payload_type!r}")
    if len(env.signatures) != 1:
        raise ValueError(f"{len(env.signatures)} signatures; exactly one expected")
    sig = env.signatures[0]
    raw = keys.get(sig.keyid)
    if raw is None:
        raise ValueError(f"signed by unknown key {sig.keyid}")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig.sig, pae(env.payload_type, env.payload))
    except InvalidSignature:
        raise ValueError(f"bad signature by key {sig.keyid}") from None
    return sig.keyid


def read_card(pb, path: str):
    """Reads an org card exported as DSSE JSON, checks its self-signature,
    and returns (org id, {key id: raw public key})."""
    doc = json.loads(Path(path).read_text())
    env = pb["envelope_pb2"].Envelope(
        payload=base64.b64decode(doc["payload"]),
        payload_type=doc["payloadType"],
        signatures=[
            pb["envelope_pb2"].Signature(keyid=s.get("keyid", ""), sig=base64.b64decode(s["sig"]))
            for s in doc["signatures"]
        ],
    )
    card = pb["envelope_pb2"].OrgCard.FromString(env.payload)
    keys = {}
    for k in card.signing_keys:
        if key_id(k.public_key) != k.key_id:
            raise ValueError(f"card of {card.org_id}: key id {k.key_id} does not match its key")
        if not k.revoked:
            keys[k.key_id] = k.public_key
    verify(env, CARD_TYPE, keys)
    return card.org_id, keys


def channel(args):
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=Path(args.key).read_bytes(),
        certificate_chain=Path(args.cert).read_bytes(),
    )
    return grpc.secure_channel(args.server, creds)


def cmd_services(args, pb):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    db = ProtoReflectionDescriptorDatabase(channel(args))
    services = sorted(db.get_services())
    for s in services:
        print(s)
    for wanted in ["threatmesh.v1.Exchange", "threatmesh.v1.Admin", "grpc.health.v1.Health"]:
        if wanted not in services:
            sys.exit(f"reflection does not list {wanted}")
    # The descriptors come with it: Publish's input type is resolvable.
    method = db.FindFileContainingSymbol("threatmesh.v1.Exchange")
    print(f"threatmesh.v1.Exchange is in {method.name}")


def cmd_health(args, pb):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel(args))
    for service in ["", "threatmesh.v1.Exchange", "threatmesh.v1.Admin"]:
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        print(f"{service or '(server)'}: {name}")
        if name != "SERVING":
            sys.exit(f"{service or 'server'} is {name}")


def cmd_publish(args, pb):
    ex = pb["exchange_pb2"]
    env = pb["envelope_pb2"]
    draft = ex.IndicatorDraft(
        kind=env.IndicatorKind.Value("INDICATOR_KIND_" + args.kind.upper()),
        value=args.value,
        marking=env.Marking(tlp=env.Tlp.Value("TLP_" + args.tlp.upper().replace("+", "_"))),
        confidence=args.confidence,
        tags=args.tag,
    )
    stub = pb["exchange_pb2_grpc"].ExchangeStub(channel(args))
    key = args.idempotency_key or str(uuid.uuid4())
    first = stub.Publish(ex.PublishRequest(indicator=draft, idempotency_key=key), timeout=30)
    # A retry under the same key (as after a lost answer) publishes nothing new.
    again = stub.Publish(ex.PublishRequest(indicator=draft, idempotency_key=key), timeout=30)
    if not again.replayed or (again.id, again.version) != (first.id, first.version):
        sys.exit(f"retry under key {key} was not answered with the original: {again}")
    print(json.dumps({"id": first.id, "version": first.version, "seq": first.seq}))


def cmd_subscribe(args, pb):
    env_pb = pb["envelope_pb2"]
    ex = pb["exchange_pb2"]
    origin, keys = read_card(pb, args.card)
    stub = pb["exchange_pb2_grpc"].ExchangeStub(channel(args))
    seen = 0
    stream = stub.Subscribe(ex.SubscribeRequest(from_cursor=0), timeout=args.timeout)
    for msg in stream:
        for d in msg.deliveries:
            e = env_pb.Envelope.FromString(d.envelope)
            kid = verify(e, INDICATOR_TYPE, keys)
            # Only now is the payload decoded: exactly the verified bytes.
            ind = env_pb.Indicator.FromString(e.payload)
            if ind.origin_org != origin or ind.key_id != kid or list(d.path)[:1] != [origin]:
                sys.exit(f"seq {d.seq}: origin {ind.origin_org} / key {ind.key_id} / path {list(d.path)} disagree with the signature")
            # The check is real: one flipped payload bit fails it.
            tampered = env_pb.Envelope()
            tampered.CopyFrom(e)
            tampered.payload = bytes([e.payload[0] ^ 1]) + e.payload[1:]
            try:
                verify(tampered, INDICATOR_TYPE, keys)
                sys.exit(f"seq {d.seq}: a tampered envelope verified")
            except ValueError:
                pass
            seen += 1
            print(json.dumps({"seq": d.seq, "origin": ind.origin_org, "id": ind.id,
                              "version": ind.version, "kind": env_pb.IndicatorKind.Name(ind.kind),
                              "value": ind.value, "verified_with": kid}))
        if seen >= args.count:
            stream.cancel()
            break
    if seen < args.count:
        sys.exit(f"{seen} of {args.count} indicators arrived")


def cmd_taxii(args, pb):
    """Walks discovery -> API root -> collections -> objects with OASIS's
    taxii2-client, page by page, and checks the objects are exactly those of
    --expect (a `threatmesh export --partner` bundle of the same view)."""
    import os

    from taxii2client.v21 import Server, as_pages

    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override the CA a
    # session was given: this client trusts only the node's org CA.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(var, None)
    server = Server(args.url, verify=os.path.abspath(args.ca), cert=(args.cert, args.key))
    print(f"discovery: {server.title}; API roots: {len(server.api_roots)}")
    root = server.api_roots[0]
    print(f"API root: {root.title}; versions {root.versions}")
    collection = root.collections[0]
    print(f"collection {collection.id}: can_read={collection.can_read} can_write={collection.can_write}")
    got, pages, last_added = set(), 0, None
    for page in as_pages(collection.get_objects, per_request=args.page):
        pages += 1
        for o in page.get("objects", []):
            got.add(o["id"])
    expect = {
        o["id"]
        for o in json.loads(Path(args.expect).read_text())["objects"]
        if o["type"] == "indicator"
    }
    if got != expect:
        sys.exit(f"TAXII gave {len(got)} objects, the policy view has {len(expect)}: "
                 f"extra {sorted(got - expect)}, missing {sorted(expect - got)}")
    print(f"objects: {len(got)} in {pages} page(s) of {args.page}, exactly the policy view")
    manifest = collection.get_manifest()
    last_added = max(m["date_added"] for m in manifest.get("objects", [])) if got else None
    if last_added:
        later = collection.get_objects(added_after=last_added).get("objects", [])
        if later:
            sys.exit(f"added_after={last_added} still gave {len(later)} objects")
        print(f"added_after={last_added}: nothing newer, as expected")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="host:port of the node, the host as in its certificate")
    p.add_argument("--ca", required=True, help="the node's org CA (PEM)")
    p.add_argument("--cert", required=True, help="our certificate (PEM)")
    p.add_argument("--key", required=True, help="our private key (PEM)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("services", help="list services through gRPC reflection")
    sub.add_parser("health", help="gRPC health of every service")
    pub = sub.add_parser("publish", help="publish one indicator (publisher certificate)")
    pub.add_argument("--kind", required=True)
    pub.add_argument("--value", required=True)
    pub.add_argument("--tlp", default="GREEN")
    pub.add_argument("--confidence", type=int, default=80)
    pub.add_argument("--tag", action="append", default=[])
    pub.add_argument("--idempotency-key")
    s = sub.add_parser("subscribe", help="read and verify indicators (a partner's node certificate)")
    s.add_argument("--card", required=True, help="the origin's org card (DSSE JSON, `threatmesh card export`)")
    s.add_argument("--count", type=int, default=1, help="stop after this many indicators")
    s.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    tx = sub.add_parser("taxii", help="walk the TAXII 2.1 server with taxii2-client")
    tx.add_argument("--url", required=True, help="discovery URL, https://host:port/taxii2/")
    tx.add_argument("--expect", required=True, help="bundle of the expected view (threatmesh export)")
    tx.add_argument("--page", type=int, default=2, help="objects per request")
    args = p.parse_args()
    pb = stubs()
    {"services": cmd_services, "health": cmd_health, "publish": cmd_publish,
     "subscribe": cmd_subscribe, "taxii": cmd_taxii}[args.cmd](args, pb)


if __name__ == "__main__":
    main()
