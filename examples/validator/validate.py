#!/usr/bin/env python3
"""Validate a latch access token locally, as a resource server that never calls latch:
verify it against the JWKS, then look up its bit in its Token Status List.

    pip install 'PyJWT[crypto]'
    python3 validate.py ISSUER AUDIENCE < token     # prints VALID (exit 0) or INVALID (1)
"""
import base64
import json
import sys
import urllib.request
import zlib

import jwt  # PyJWT

ALGS = ["EdDSA", "ES256", "RS256"]


def fetch(url, accept):
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read()


def validate(issuer, audience, token):
    meta = json.loads(fetch(issuer + "/.well-known/oauth-authorization-server", "application/json"))
    keys = jwt.PyJWKClient(meta["jwks_uri"], cache_keys=True)

    # 1. The token itself: latch's signature, type, issuer, audience, time.
    if jwt.get_unverified_header(token).get("typ") != "at+jwt":
        raise ValueError("not an access token")
    claims = jwt.decode(token, keys.get_signing_key_from_jwt(token), algorithms=ALGS,
                        issuer=meta["issuer"], audience=audience,
                        options={"require": ["exp", "iat", "status"]})

    # 2. Its status list: signed by latch too, about this very list, not expired.
    ref = claims["status"]["status_list"]
    lst_jwt = fetch(ref["uri"], "application/statuslist+jwt").decode()
    if jwt.get_unverified_header(lst_jwt).get("typ") != "statuslist+jwt":
        raise ValueError("not a status list token")
    lst = jwt.decode(lst_jwt, keys.get_signing_key_from_jwt(lst_jwt), algorithms=ALGS,
                     issuer=meta["issuer"], options={"require": ["exp", "iat", "sub"]})
    if lst["sub"] != ref["uri"]:
        raise ValueError("status list for another URI")

    # 3. The bit: `bits` per status, least significant first, zlib-compressed, base64url.
    bits, packed = lst["status_list"]["bits"], lst["status_list"]["lst"]
    raw = zlib.decompress(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)))
    per_byte, idx = 8 // bits, ref["idx"]
    status = (raw[idx // per_byte] >> (idx % per_byte * bits)) & ((1 << bits) - 1)
    return status == 0  # 0 VALID; anything else (1 INVALID, 2 SUSPENDED) is not


if __name__ == "__main__":
    valid = validate(sys.argv[1], sys.argv[2], sys.stdin.read().strip())
    print("VALID" if valid else "INVALID")
    sys.exit(0 if valid else 1)
