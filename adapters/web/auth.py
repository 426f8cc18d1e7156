"""Bearer tokens for the web app: who is asking, and which tenant they may see.

A token file has one token per line, ``TENANT TOKEN`` (the token sees and acts on that tenant
only) or ``* TOKEN`` (every tenant); blank lines and ``#`` comments are ignored. Tokens are
compared with :func:`hmac.compare_digest` against every configured token (no early exit), and
never appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pipestate.domain.errors import InvalidArgument

ALL_TENANTS: Final = "*"
MIN_TOKEN_LENGTH: Final = 16


@dataclass(frozen=True)
class Principal:
    """The caller: ``tenant`` None means every tenant; ``authenticated`` False is anonymous."""

    tenant: str | None
    authenticated: bool
    via_cookie: bool = False

    def sees(self, tenant_id: str) -> bool:
        return self.tenant is None or self.tenant == tenant_id


ANONYMOUS: Final = Principal(tenant=None, authenticated=False)


class TokenSet:
    """The configured tokens, each with its scope."""

    def __init__(self, entries: Iterable[tuple[str, str | None]] = ()) -> None:
        self._entries: list[tuple[bytes, str | None]] = []
        for token, tenant in entries:
            if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
                raise InvalidArgument(
                    "token", "…", f"tokens need at least {MIN_TOKEN_LENGTH} characters and no spaces"
                )
            self._entries.append((token.encode(), tenant))

    @classmethod
    def parse(cls, text: str) -> TokenSet:
        """Lines of ``TENANT TOKEN`` or ``* TOKEN``.

        Raises:
            InvalidArgument: a malformed line (its number is given, never its content).
        """
        entries: list[tuple[str, str | None]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise InvalidArgument("token file", f"line {number}", "expected 'TENANT TOKEN' or '* TOKEN'")
            scope, token = parts
            entries.append((token, None if scope == ALL_TENANTS else scope))
        return cls(entries)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenSet:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidArgument("--token-file", str(path), f"cannot read it ({exc.strerror})") from None
        return cls.parse(text)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"TokenSet({len(self._entries)} tokens)"

    def match(self, presented: str, *, via_cookie: bool = False) -> Principal | None:
        """The principal of ``presented``, or ``None``. Compares against every token."""
        given = presented.encode()
        found: Principal | None = None
        for token, tenant in self._entries:
            if hmac.compare_digest(token, given) and found is None:
                found = Principal(tenant=tenant, authenticated=True, via_cookie=via_cookie)
        return found
