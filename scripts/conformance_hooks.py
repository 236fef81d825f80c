"""schemathesis hooks of scripts/conformance: which demo client authenticates each call.

The demo secrets are published (config/latch.toml, README.md). The admin client has the
admin and introspect roles, so it reaches every admin and introspection operation; the
token endpoint is called as `orders-service`, the demo client with a grant, so generated
token requests can succeed as well as fail; the Shared Signals operations as the receiver
scripts/conformance adds.
"""

import base64

import schemathesis

ADMIN = ("admin", "demo-admin-secret-0123456789abcdef0123456789a")
ORDERS = ("orders-service", "demo-orders-secret-0123456789abcdef0123456789")
# Added to the demo config by scripts/conformance.
RECEIVER = ("risk-engine", "conformance-receiver-secret-0123456789abcdef0")


def basic(pair):
    raw = f"{pair[0]}:{pair[1]}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@schemathesis.auth()
class DemoClients:
    def get(self, case, ctx):
        return {"/token": basic(ORDERS), "ssf": basic(RECEIVER), "*": basic(ADMIN)}

    def set(self, case, data, ctx):
        path = case.operation.path
        header = data["ssf"] if path.startswith("/ssf/") else data.get(path, data["*"])
        case.headers = dict(case.headers or {})
        case.headers["Authorization"] = header


@schemathesis.deserializer("application/token-introspection+jwt")
def jwt_text(ctx, response):
    """An RFC 9701 answer is a JWS compact text; its schema is a string (tests/openapi.rs
    checks its header and claims)."""
    return response.content.decode("ascii")
