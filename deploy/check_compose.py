"""Checks deploy/compose.yaml without a container daemon: that it is valid
YAML, that every reference in it resolves (depends_on, volumes, networks),
that each service gives the environment its script needs, that every
partner a -link service names has an -init service and every policy it
binds is one `init --with-examples` writes, and that no two services
publish the same host port. `.ci/run` runs it; `docker compose config`
does more where Compose is installed.

    python deploy/check_compose.py deploy/compose.yaml
"""

import pathlib
import sys

import yaml

path = pathlib.Path(sys.argv[1])
root = path.resolve().parent.parent
doc = yaml.safe_load(path.read_text())
services = doc["services"]
volumes = set(doc.get("volumes") or {})
networks = set(doc.get("networks") or {})
policies = {p.stem for p in (root / "config" / "policies").glob("*.toml")}
errors = []
ports = {}
orgs = {}

for name, s in services.items():
    if "image" not in s and "build" not in s:
        errors.append(f"{name}: neither image nor build")
    for dep in s.get("depends_on") or {}:
        if dep not in services:
            errors.append(f"{name}: depends_on unknown service {dep}")
    for v in s.get("volumes") or []:
        source = v.split(":")[0]
        if not source.startswith((".", "/")) and source not in volumes:
            errors.append(f"{name}: volume {source} is not declared")
    nets = s.get("networks") or []
    for n in nets if isinstance(nets, list) else nets.keys():
        if n not in networks:
            errors.append(f"{name}: network {n} is not declared")
    for p in s.get("ports") or []:
        host = p.rsplit(":", 1)[0]
        if host in ports:
            errors.append(f"{name}: host port {host} also published by {ports[host]}")
        ports[host] = name
    env = s.get("environment") or {}
    entry = " ".join(s.get("entrypoint") or [])
    if entry.endswith("init.sh"):
        for key in ("ORG", "HOST"):
            if key not in env:
                errors.append(f"{name}: init.sh needs {key}")
        orgs[env.get("ORG")] = name
    if entry.endswith("link.sh"):
        for key in ("ORG", "PARTNERS", "THREATMESH_SERVER"):
            if key not in env:
                errors.append(f"{name}: link.sh needs {key}")

for name, s in services.items():
    env = s.get("environment") or {}
    if " ".join(s.get("entrypoint") or []).endswith("link.sh"):
        for pair in env.get("PARTNERS", "").split():
            partner, _, policy = pair.partition("=")
            if partner not in orgs:
                errors.append(f"{name}: partner {partner} has no -init service")
            if policy not in policies:
                errors.append(f"{name}: policy {policy} is not in config/policies")
        if env.get("ORG") not in orgs:
            errors.append(f"{name}: org {env.get('ORG')} has no -init service")

if errors:
    print("\n".join(f"{path}: {e}" for e in errors))
    sys.exit(1)
print(f"{path}: {len(services)} services, {len(orgs)} organisations, references resolve")
