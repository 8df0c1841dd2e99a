"""Verifies a token agentguard minted with PyJWT, as a Python tool server
would: the JWKS (a file, as `agentguard token jwks` prints it), the
algorithms the server allows, its issuer and its audience.

    python3 verify_token.py JWKS_FILE TOKEN ISSUER AUDIENCE ALG

Prints the claims as JSON and exits 0 when the token verifies; prints why
and exits 1 when it does not.
"""

import json
import sys

import jwt

jwks_file, token, issuer, audience, alg = sys.argv[1:]
with open(jwks_file, encoding="utf-8") as f:
    keys = jwt.PyJWKSet.from_json(f.read())
try:
    kid = jwt.get_unverified_header(token).get("kid")
    key = next((k for k in keys.keys if k.key_id == kid), None)
    if key is None:
        raise jwt.InvalidKeyError(f"no key {kid!r} in the JWKS")
    claims = jwt.decode(
        token, key.key, algorithms=[alg], audience=audience, issuer=issuer
    )
except jwt.PyJWTError as e:
    print(f"refused: {type(e).__name__} {e}")
    sys.exit(1)
print(json.dumps(claims))
