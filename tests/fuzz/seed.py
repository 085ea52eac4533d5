#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target from the test payloads in tests/data (and the
configuration files), in each target's input format (infragpt::testkit::fuzz): run it from
anywhere; it writes tests/fuzz/seeds/<target>/. The fuzz runs start from these seeds plus the
saved corpus (tests/fuzz/corpus/<target>/), and the saved corpus is minimized from both."""
import base64, json, pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent.parent
DATA = ROOT / "tests" / "data"
OUT = FUZZ / "seeds"
NOW = 1_700_000_000  # testkit::fuzz::NOW


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def slack_payloads():
    for sub in ("events_api", "socket_mode"):
        for p in sorted((DATA / "slack" / sub).glob("*.json")):
            yield f"{sub}-{p.stem}", p.read_bytes()


for name, body in slack_payloads():
    write("slack_envelope", name, body)
    # Flags 1: the target signs the body itself (and it must verify); 0: the header as given.
    write("slack_signature", f"signed-{name}", b"\x01" + f"{NOW}\nv0=\n".encode() + body)
vector = json.loads((DATA / "slack" / "signing-vector.json").read_text())
write("slack_signature", "vector",
      b"\x00" + f"{vector['timestamp']}\n{vector.get('signature', 'v0=' + '0' * 64)}\n".encode()
      + vector["body"].encode())
write("slack_signature", "bad-format", b"\x00" + f"{NOW}\nv0=zz\n{{}}".encode())

for p in sorted((DATA / "svix" / "clerk").glob("*.json")):
    write("clerk_webhook", f"signed-{p.stem}",
          b"\x01" + f"msg_{p.stem}\n{NOW}\nv1,AAAA\n".encode() + p.read_bytes())
for file in ("vectors.json", "vectors-invalid.json"):
    for i, v in enumerate(json.loads((DATA / "svix" / file).read_text())):
        if not isinstance(v, dict) or "payload" not in v:
            continue
        write("clerk_webhook", f"{pathlib.Path(file).stem}-{i}",
              b"\x00" + f"{v.get('msg_id', '')}\n{v.get('timestamp', '')}\n{v.get('signature', '')}\n".encode()
              + v["payload"].encode())

for event_dir in sorted((DATA / "github-webhooks").iterdir()):
    if not event_dir.is_dir():
        continue
    smallest = min(event_dir.glob("*.json"), key=lambda p: p.stat().st_size)
    write("github_webhook", f"signed-{event_dir.name}-{smallest.stem}",
          b"\x01" + f"{event_dir.name}\nsha256=\n".encode() + smallest.read_bytes())
write("github_webhook", "unsigned-ping", b"\x00ping\nsha256=" + b"0" * 64 + b"\n{\"zen\": \"x\"}")


def b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


claims_v2 = {"iss": "https://clerk.example.com", "sub": "user_1", "sid": "sess_1",
             "exp": NOW + 60, "iat": NOW - 10, "nbf": NOW - 10, "v": 2,
             "azp": "https://app.example.com",
             "o": {"id": "org_1", "rol": "admin", "slg": "acme", "per": "org:a,org:b"}}
claims_v1 = {"iss": "https://clerk.example.com", "sub": "user_1", "sid": "sess_1",
             "exp": NOW + 60, "org_id": "org_1", "org_role": "org:member",
             "org_permissions": ["x"]}
for name, claims in (("v2", claims_v2), ("v1", claims_v1)):
    write("jwt", f"claims-{name}", json.dumps(claims))
    write("jwt", f"token-{name}", f"{b64({'alg': 'RS256', 'kid': 'ins_1', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl")
write("jwt", "token-none", f"{b64({'alg': 'none'})}.{b64(claims_v2)}.")
write("jwt", "token-hs256", f"{b64({'alg': 'HS256', 'kid': 'k'})}.{b64(claims_v2)}.AAAA")
write("jwt", "jwks", json.dumps({"keys": [
    {"kty": "RSA", "kid": "ins_1", "alg": "RS256", "use": "sig", "n": "sXch", "e": "AQAB"},
    {"kty": "EC", "kid": "ec"}]}))

for p in sorted((ROOT / "config").glob("*.yaml")):
    write("config", p.stem, p.read_bytes())
write("config", "env", "database:\n  url: ${FUZZ_DB}\nlog_level: ${UNSET:-debug}\nport: ${FUZZ_PORT:-8080}\n")
write("config", "bad-key", "agent:\n  endpont: x\n")

markdown = [
    "# Title\n\n*emphasis* and **strong** and `code` <@U123> & <#C1|ops> <!here>\n",
    "- one\n  - nested [link](https://example.com/a_(b))\n1. first\n\n> quote\n",
    "| a | b |\n|---|---|\n| 1 | 22 |\n",
    "```rust\nfn main() {}\n```\n~~strike~~ ![img](x.png)\n",
    # A split with a fence open, then one line longer than a message.
    "```\n" + "x\n" * 1940 + "y" * 4000 + "\n```\n",
]
for i, text in enumerate(markdown):
    write("mrkdwn", f"markdown-{i}", text)
print("seeds written to", OUT)
