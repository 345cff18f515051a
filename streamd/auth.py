"""
Identity and access: who a request is (C{[auth] mode}), and which streams it may read
and publish. No I/O; the HTTP layer calls L{Auth.identify} and L{Identity.require}.

Modes: C{none} (everyone may do everything; the identity is the client address),
C{identifier} (the client names itself: C{?identifier=} or a C{Streamd-Identifier}
header), C{token} (static tokens from the config) and C{jwt} (HS256 tokens signed with
the configured secret, claims C{sub}, C{read}, C{publish}, C{admin}, C{exp}).
Tokens come from C{Authorization: Bearer}, the C{streamd_token} cookie, or
C{?access_token=} (a browser's EventSource cannot set headers).

With a mode other than C{none}, the operational endpoints (L{OPERATIONAL}) answer an
admin only, except those that C{[auth] public} lists (by default C{health}).
"""

from __future__ import annotations

import hmac
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from streamd.errors import Forbidden, Unauthorized
from streamd.keys import ConfigError, Table, frozen, keys_of, read_table, setting

#: What L{Unauthorized} says of a bearer token it refuses (its message, and the
#: error_description of its challenge).
INVALID, EXPIRED, NOT_YET_VALID = "invalid token", "token expired", "token not yet valid"
TOKEN_PROBLEMS = (INVALID, EXPIRED, NOT_YET_VALID)
#: The one algorithm a JWT may be signed with.
JWT_ALGORITHM = "HS256"

#: The operational endpoints, by the names C{[auth] public} lists: GET /health, GET /
#: (the JSON status, and the live page for a browser), GET /metrics, GET /openapi.json.
OPERATIONAL = ("health", "status", "page", "metrics", "openapi")

TOKEN_COOKIE = b"streamd_token"
IDENTIFIER_HEADER = b"streamd-identifier"

def _check_public(names: list[str]) -> str | None:
    return next((f"unknown endpoint {n!r} (known: {', '.join(OPERATIONAL)})"
                 for n in names if n not in OPERATIONAL), None)


@dataclass(frozen=True, kw_only=True)
class TokenSettings(Table):
    """One C{[[auth.tokens]]} table: a static token and what its identity may do."""

    token: str = setting("str", None, secret=True)
    identity: str = setting("str", None)
    read: tuple[str, ...] = setting("list", ["*"])
    publish: tuple[str, ...] = setting("list", [])
    admin: bool = setting("bool", False)


@dataclass(frozen=True, kw_only=True)
class AuthSettings(Table):
    """The C{[auth]} table (see L{Auth})."""

    mode: str = setting("enum", "none", choices=("none", "identifier", "token", "jwt"))
    jwt_secret: str = setting("str", "", secret=True)
    max_connections_per_identity: int = setting("int", 0, minimum=0)
    admins: tuple[str, ...] = setting("list", [])
    # With a mode other than none, these answer anyone; the others an admin only.
    public: tuple[str, ...] = setting("list", ["health"], check=_check_public)
    tokens: tuple[TokenSettings, ...] = ()

    @classmethod
    def from_table(cls, table: Any, where: str) -> AuthSettings:
        """The C{[auth]} table, checked (one error naming the key)."""
        if not isinstance(table, dict):
            raise ConfigError(where, "expected a table")
        values = read_table(keys_of(cls), {k: v for k, v in table.items() if k != "tokens"},
                            where)
        tokens = table.get("tokens", [])
        if not isinstance(tokens, list):
            raise ConfigError(f"{where}.tokens", "expected [[auth.tokens]] tables")
        entries = []
        for i, t in enumerate(tokens):
            w = f"{where}.tokens[{i}]"
            entry = TokenSettings.from_table(t, w)
            for required in ("token", "identity"):
                if not getattr(entry, required):
                    raise ConfigError(f"{w}.{required}", "required")
            entries.append(entry)
        if values["mode"] == "token" and not entries:
            raise ConfigError(f"{where}.tokens",
                              "mode token needs at least one [[auth.tokens]]")
        if values["mode"] == "jwt" and len(values["jwt_secret"]) < 16:
            raise ConfigError(f"{where}.jwt_secret",
                              "mode jwt needs a secret of 16+ characters")
        return cls(**{k: frozen(v) for k, v in values.items()}, tokens=tuple(entries))


@dataclass(frozen=True)
class Identity:
    """Who is asking, and the stream-name patterns (globs) it may read and publish."""

    name: str
    read: tuple[str, ...] = ("*",)
    publish: tuple[str, ...] = ("*",)
    admin: bool = False

    def may(self, action: str, stream: str) -> bool:
        patterns = self.read if action == "read" else self.publish
        return any(fnmatchcase(stream, p) for p in patterns)

    def require(self, action: str, stream: str) -> Identity:
        if not self.may(action, stream):
            raise Forbidden(f"{self.name!r} may not {action} {stream!r}")
        return self


@dataclass
class Auth:
    """The configured mode and its credentials."""

    mode: str = "none"
    jwt_secret: bytes = b""
    tokens: dict[str, Identity] = field(default_factory=dict)
    admins: tuple[str, ...] = ()
    max_connections_per_identity: int = 0
    public: frozenset[str] = frozenset({"health"})
    #: Seconds of clock skew a JWT's exp and nbf are allowed; the audience its
    #: "aud" must name (None: not checked). Not config keys yet.
    jwt_leeway: float = 0.0
    jwt_audience: str | None = None

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Auth:
        """The C{[auth]} table's mode and credentials."""
        admins = settings.admins
        tokens = {
            t.token: Identity(t.identity, t.read, t.publish, t.admin or t.identity in admins)
            for t in settings.tokens
        }
        return cls(
            mode=settings.mode,
            jwt_secret=settings.jwt_secret.encode(),
            tokens=tokens,
            admins=admins,
            max_connections_per_identity=settings.max_connections_per_identity,
            public=frozenset(settings.public),
        )

    def is_public(self, endpoint: str) -> bool:
        """Whether anyone may see the operational C{endpoint} (one of L{OPERATIONAL})."""
        return self.mode == "none" or endpoint in self.public

    def operator(self, request, endpoint: str) -> Identity | None:
        """
        Who may see an operational endpoint: anyone (None) if it L{is_public}, else an
        identity with C{admin}. Raises L{Unauthorized} or L{Forbidden}.
        """
        if self.is_public(endpoint):
            return None
        identity = self.identify(request)
        if not identity.admin:
            raise Forbidden(f"{identity.name!r} may not see {endpoint}: it needs an admin "
                            "identity")
        return identity

    def identify(self, request) -> Identity:
        """
        Who sent C{request}; raises L{Unauthorized} when that cannot be told. A
        JWT's times are checked against the system clock (PyJWT takes no clock).
        """
        if self.mode == "none":
            addr = request.getClientAddress()
            return Identity(getattr(addr, "host", None) or str(addr))
        if self.mode == "identifier":
            values = request.args.get(b"identifier") or []
            name = values[-1] if values else request.getHeader(IDENTIFIER_HEADER)
            if not name:
                raise Unauthorized("identifier missing", 'Identifier realm="streamd"')
            name = name.decode("utf-8", "replace")
            return Identity(name, admin=name in self.admins)
        token = bearer_token(request)
        if token is None:
            raise Unauthorized("credentials missing: send a bearer token",
                               'Bearer realm="streamd"')
        if self.mode == "token":
            identity, problem = self._static(token), INVALID
        else:
            identity, problem = self._jwt(token)
        if identity is None:
            raise Unauthorized(problem, 'Bearer realm="streamd", error="invalid_token", '
                                        f'error_description="{problem}"')
        return identity

    def _static(self, token: str) -> Identity | None:
        found = None
        for known, identity in self.tokens.items():
            # Compare every token in constant time: no early exit on a match.
            if hmac.compare_digest(known.encode(), token.encode()):
                found = identity
        return found

    def _jwt(self, token: str) -> tuple[Identity | None, str]:
        """The token's identity, or None and why not (one of L{TOKEN_PROBLEMS})."""
        claims, problem = check_hs256(token, self.jwt_secret, self.jwt_leeway,
                                      self.jwt_audience)
        if claims is None or not isinstance(claims.get("sub"), str):
            return None, problem or INVALID

        def globs(name: str) -> tuple[str, ...]:
            v = claims.get(name, [])
            v = [v] if isinstance(v, str) else v
            return tuple(p for p in v if isinstance(p, str))

        return Identity(claims["sub"], globs("read"), globs("publish"),
                        claims.get("admin") is True or claims["sub"] in self.admins), ""


def bearer_token(request) -> str | None:
    header = request.getHeader(b"authorization")
    if header:
        scheme, _, value = header.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    cookie = request.getCookie(TOKEN_COOKIE)
    if cookie:
        return cookie.decode("latin-1")
    values = request.args.get(b"access_token")
    if values and values[-1]:
        return values[-1].decode("latin-1")
    return None


def verify_hs256(token: str, secret: bytes) -> dict[str, Any] | None:
    """The claims of a valid, unexpired HS256 JWT; None for anything else."""
    return check_hs256(token, secret)[0]


def check_hs256(token: str, secret: bytes, leeway: float = 0.0,
                audience: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """
    The claims of an HS256 JWT that is valid now, or None and why not (one of
    L{TOKEN_PROBLEMS}). PyJWT checks the signature, then C{exp} and C{nbf} against
    the system clock (give or take C{leeway} seconds) and, given an C{audience},
    C{aud}; the time claims are told apart only for a token whose signature is ours.
    C{iat} is information, not a condition (as before PyJWT): a token minted by a
    host whose clock runs a little ahead is not refused for it.
    """
    if not secret:
        return None, INVALID
    try:
        with warnings.catch_warnings():
            # The secret's length is checked where it is configured (16+ characters,
            # as the README says); PyJWT would warn on every request below 32.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            # Only JWT_ALGORITHM: a token must not choose its own ("none", RS256 with
            # our secret as a public key, ...). Without an audience, "aud" is not
            # checked (as before PyJWT, which would refuse every token that has one).
            claims = jwt.decode(token, secret, algorithms=[JWT_ALGORITHM], leeway=leeway,
                                audience=audience,
                                options={"require": ["sub"], "verify_aud": audience is not None,
                                         "verify_iat": False})
    except jwt.ExpiredSignatureError:
        return None, EXPIRED
    except jwt.ImmatureSignatureError:  # nbf in the future
        return None, NOT_YET_VALID
    except jwt.InvalidTokenError:  # also malformed JSON (NaN times, deep nesting)
        return None, INVALID
    return claims, ""


def sign_hs256(claims: dict[str, Any], secret: bytes) -> str:
    """Make a token (for tests, scripts and the README)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)
