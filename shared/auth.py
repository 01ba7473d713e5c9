"""JWT bearer authentication: HS256 with a shared secret locally, RS256 with a public key in
production. ``sub`` is the user id, ``scope`` a space-separated list (``admin``, ``service``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from shared.errors import ApiError
from shared.settings import ServiceSettings

ADMIN = "admin"
SERVICE = "service"


@dataclass(frozen=True)
class Principal:
    user_id: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="pinwheel"'})


class JwtVerifier:
    def __init__(self, settings: ServiceSettings) -> None:
        if settings.jwt_public_key is not None:
            self.algorithm = "RS256"
            self.key: Any = settings.jwt_public_key.get_secret_value()
        elif settings.jwt_secret is not None:
            self.algorithm = "HS256"
            self.key = settings.jwt_secret.get_secret_value()
        else:  # settings refuse this combination; kept for type narrowing
            raise ValueError("no JWT key configured")
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],  # a fixed list: `none` and algorithm confusion are refused
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub", "aud"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("the token is not valid yet") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 128 or not subject.isprintable():
            raise unauthorized("invalid token: sub must be a user id")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise unauthorized("invalid token: scope must be a space-separated string")
        return Principal(subject, frozenset(scope.split()))


def issue_token(secret: str, subject: str, scopes: str = "", ttl_seconds: int = 3600,
                audience: str = "pinwheel") -> str:
    """A HS256 token for local use, tests and the demo (production verifies RS256 tokens issued
    by the identity provider)."""
    now = int(time.time())
    claims = {"sub": subject, "scope": scopes, "aud": audience, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm="HS256")


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise unauthorized("missing Authorization: Bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("the Authorization header must be 'Bearer <JWT>'")
    return token.strip()


def authenticate(request: Request) -> Principal:
    verifier: JwtVerifier = request.app.state.jwt_verifier
    principal = verifier.verify(_bearer(request))
    request.state.principal = principal
    return principal


def require_scope(scope: str) -> Any:
    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.has(scope):
            raise ApiError(403, "forbidden", f"this endpoint needs the '{scope}' scope")
        return principal

    return Depends(dependency)


CurrentUser = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, require_scope(ADMIN)]
ServiceCaller = Annotated[Principal, require_scope(SERVICE)]
