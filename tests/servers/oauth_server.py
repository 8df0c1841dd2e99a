"""An OAuth 2.0 authorization server for the delegated-token tests, built on
Authlib's server framework (Flask integration): RFC 6749 client
authentication (client_secret_basic, and RFC 7523 client assertions for
private_key_jwt), Authlib's RFC 7523 JWT-bearer grant, and an RFC 8693
token-exchange grant written on Authlib's grant base classes (Authlib has
no token-exchange grant of its own).

Every agentguard token it is given (subject, actor, assertion) is verified
for real: signature against agentguard's JWKS, fetched over HTTPS and
verified with agentguard's CA, then iss, aud, exp and sub.

usage: oauth_server.py --host IP --cert PEM --key PEM --token-path PATH
           --jwks-url-file FILE --jwks-ca PEM --issuer ISS --log FILE
           [--client ID:SECRET] [--key-client ID:PUBLIC_KEY_PEM]
           [--person NAME:TOKEN]... [--refuse-audience AUD]

Prints the port it listens on (a free one), then serves until killed.
Each issued token is a JSON line in --log: the grant, the client, how it
authenticated, the verified subject and actor, audience, scope, token.
"""

import argparse
import json
import logging
import secrets
import ssl
import sys
import threading
import urllib.request

from flask import Flask
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from werkzeug.serving import make_server

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    BaseGrant,
    ClientMixin,
    InvalidGrantError,
    InvalidRequestError,
    TokenEndpointMixin,
)
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"

args = None
log_lock = threading.Lock()


class InvalidTarget(OAuth2Error):
    """RFC 8693 §2.2.2."""

    error = "invalid_target"


class Client(ClientMixin):
    def __init__(self, client_id, secret=None, public_key=None):
        self.client_id = client_id
        self.secret = secret
        self.public_key = public_key

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return self.secret is not None and secrets.compare_digest(
            self.secret, client_secret
        )

    def check_endpoint_auth_method(self, method, endpoint):
        if self.secret is not None:
            return method == "client_secret_basic"
        if self.public_key is not None:
            return method == JWTBearerClientAssertion.CLIENT_AUTH_METHOD
        return method == "none"

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type in (TOKEN_EXCHANGE, JWTBearerGrant.GRANT_TYPE)


CLIENTS = {}


def agentguard_jwks():
    """agentguard's JWKS, read over HTTPS verified with its CA."""
    with open(args.jwks_url_file) as f:
        url = f.read().strip()
    ctx = ssl.create_default_context(cafile=args.jwks_ca)
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return json.load(r)


def verify_agentguard(token, what):
    """The claims of an agentguard identity token, once its signature
    (agentguard's JWKS), issuer, audience (this token endpoint) and lifetime
    hold."""
    try:
        keys = KeySet.import_key_set(agentguard_jwks())
        claims = jwt.decode(token, keys).claims
        jwt.JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": args.issuer},
            aud={"essential": True, "value": args.token_url},
            exp={"essential": True},
            sub={"essential": True},
        ).validate(claims)
    except (JoseError, ValueError) as e:
        raise InvalidGrantError(description=f"{what}: {e}")
    return claims


def record(entry):
    with log_lock, open(args.log, "a") as f:
        f.write(json.dumps(entry) + "\n")


def auth_method(request):
    if request.form.get("client_assertion"):
        return "private_key_jwt"
    if request.headers.get("Authorization", "").startswith("Basic "):
        return "client_secret_basic"
    return "none"


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):
    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = [
        "client_secret_basic",
        JWTBearerClientAssertion.CLIENT_AUTH_METHOD,
    ]

    def validate_token_request(self):
        client = self.authenticate_token_endpoint_client()
        form = self.request.form
        subject_token = form.get("subject_token")
        subject_type = form.get("subject_token_type")
        if not subject_token or not subject_type:
            raise InvalidRequestError("subject_token and subject_token_type are required")
        if subject_type == TYPE_JWT:
            subject = verify_agentguard(subject_token, "subject_token")["sub"]
        elif subject_type == TYPE_ACCESS_TOKEN:
            # One of this server's own access tokens, issued to a person.
            people = dict(p.split(":", 1) for p in args.person)
            subject = next(
                (n for n, t in people.items() if secrets.compare_digest(t, subject_token)),
                None,
            )
            if subject is None:
                raise InvalidGrantError(description="unknown subject_token")
        else:
            raise InvalidRequestError(f"unsupported subject_token_type {subject_type}")
        actor = None
        if form.get("actor_token"):
            if form.get("actor_token_type") != TYPE_JWT:
                raise InvalidRequestError("actor_token_type must be jwt")
            actor = verify_agentguard(form["actor_token"], "actor_token")["sub"]
        if args.refuse_audience and form.get("audience") == args.refuse_audience:
            raise InvalidTarget(description="audience not served")
        self.request.client = client
        self.exchange = {
            "subject": subject,
            "actor": actor,
            "audience": form.get("audience"),
            "resource": form.get("resource"),
            "scope": form.get("scope"),
        }

    def create_token_response(self):
        token = "xchg-" + secrets.token_urlsafe(16)
        record(
            {
                "grant": "token-exchange",
                "client": self.request.client.client_id,
                "client_auth": auth_method(self.request),
                **self.exchange,
                "token": token,
            }
        )
        body = {
            "access_token": token,
            "issued_token_type": TYPE_ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        return 200, body, self.TOKEN_RESPONSE_HEADER


class AgentJwtBearerGrant(JWTBearerGrant):
    """RFC 7523 §2.1 with agentguard as the assertion's issuer: the workload
    identity federation pattern (the issuer's keys are trusted; the subject
    is the workload)."""

    def get_audiences(self):
        return [args.token_url]

    def resolve_issuer_client(self, issuer):
        return CLIENTS.get(issuer)

    def resolve_client_public_key(self, client):
        return KeySet.import_key_set(agentguard_jwks())

    def authenticate_user(self, subject):
        return subject if subject.startswith("spiffe://") else None

    def has_granted_permission(self, client, user):
        return True

    def create_token_response(self):
        token = "fed-" + secrets.token_urlsafe(16)
        record(
            {
                "grant": "jwt-bearer",
                "client": self.request.client.client_id,
                "client_auth": "none",
                "subject": self.request.user,
                "scope": self.request.form.get("scope"),
                "token": token,
            }
        )
        body = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        return 200, body, self.TOKEN_RESPONSE_HEADER


class ClientAssertion(JWTBearerClientAssertion):
    def get_audiences(self):
        return [args.token_url]

    def resolve_client_public_key(self, client):
        return ECKey.import_key(client.public_key)

    def validate_jti(self, claims, jti):
        return True


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--token-path", required=True)
    p.add_argument("--jwks-url-file", required=True)
    p.add_argument("--jwks-ca", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--client", action="append", default=[])
    p.add_argument("--key-client", action="append", default=[])
    p.add_argument("--person", action="append", default=[])
    p.add_argument("--refuse-audience")
    args = p.parse_args()
    # The test reads the issued-token log; werkzeug's access log is noise.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    for c in args.client:
        cid, secret = c.split(":", 1)
        CLIENTS[cid] = Client(cid, secret=secret)
    for c in args.key_client:
        cid, path = c.split(":", 1)
        with open(path) as f:
            CLIENTS[cid] = Client(cid, public_key=f.read())
    # Assertions from agentguard name it as their issuer.
    CLIENTS[args.issuer] = Client(args.issuer)

    app = Flask(__name__)
    server = AuthorizationServer(app, query_client=CLIENTS.get, save_token=lambda t, r: None)
    server.register_client_auth_method(
        JWTBearerClientAssertion.CLIENT_AUTH_METHOD, ClientAssertion()
    )
    server.register_grant(TokenExchangeGrant)
    server.register_grant(AgentJwtBearerGrant)

    @app.route(args.token_path, methods=["POST"])
    def token():
        return server.create_token_response()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv = make_server(args.host, 0, app, threaded=True, ssl_context=ctx)
    # The audience agentguard's tokens must name: this endpoint's URL.
    args.token_url = f"https://{args.host}:{srv.server_port}{args.token_path}"
    print(srv.server_port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
