"""API keys: created once and shown once, stored as SHA-256 digests.

Keys are 256-bit random tokens, so a fast digest is as safe as a slow one and
lets every request be checked with one indexed lookup. Each process caches the
keys it has seen; an entry holds only while the generation counter in Redis is
unchanged, and every revocation bumps it, so a revoked key fails at once
everywhere. A request that submits a job reads the counter in the script that
stores the job instead of on its own (one round trip fewer): the script refuses
a key checked at an older generation, and the submit checks the key again.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from typing import Any, cast

import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from common.accounts.models import (
    KEY_PREFIX,
    ApiKey,
    KeyIdentity,
    digest,
    naive_utc,
    utcnow,
)
from common.redis.keys import KEYS_GENERATION_KEY

#: Most keys one process caches; the cache starts over when full.
KEY_CACHE_ENTRIES = 10_000


class KeyStore:
    """Creates, lists, revokes and checks API keys."""

    def __init__(self, engine: Engine, client: redis.Redis) -> None:
        self.engine = engine
        self.redis = client
        self._cache: dict[str, KeyIdentity] = {}

    def create(self, name: str, **limits: Any) -> tuple[ApiKey, str]:
        """Create a key; return its row and the key itself (shown only now)."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id=f"key_{uuid.uuid4().hex[:20]}",
            name=name,
            key_hash=digest(raw),
            hint=f"{raw[:9]}…{raw[-4:]}",
            created_at=utcnow(),
            expires_at=naive_utc(limits.pop("expires_at", None)),
            **limits,
        )
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(row)
            session.commit()
        return row, raw

    def list(self) -> list[ApiKey]:
        with Session(self.engine) as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    def get(self, key_id: str) -> ApiKey | None:
        with Session(self.engine) as session:
            return session.get(ApiKey, key_id)

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key; None if there is no such key."""
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(ApiKey, key_id)
            if row is not None and row.revoked_at is None:
                row.revoked_at = utcnow()
                session.commit()
                self.redis.incr(KEYS_GENERATION_KEY)
            return row

    def authenticate(self, raw_key: str, *, fresh: bool = True) -> KeyIdentity | None:
        """The identity of a live key, or None if unknown, revoked or expired.

        ``fresh=False`` trusts a cached identity without reading the generation
        counter: the caller checks ``identity.generation`` in the write that
        relies on the key (``JobStore.create``) and calls ``recheck`` if stale.
        """
        if not raw_key.isascii():
            # Every key is ASCII; one from a JSON body may not even encode
            # (a lone surrogate), so it is refused before it is hashed.
            return None
        wanted = digest(raw_key)
        cached = self._cache.get(wanted)
        identity = cached if cached and not fresh else self._checked(wanted, cached)
        return _live(identity)

    def recheck(self, identity: KeyIdentity) -> KeyIdentity | None:
        """``identity`` checked again at the current generation; None if it died."""
        return _live(self._checked(identity.digest, None))

    def _checked(self, wanted: str, cached: KeyIdentity | None) -> KeyIdentity | None:
        raw = cast(bytes | None, self.redis.get(KEYS_GENERATION_KEY))
        generation = raw.decode() if raw else ""
        if cached is not None and cached.generation == generation:
            return cached
        identity = self._lookup(wanted, generation)
        if identity is None:
            self._cache.pop(wanted, None)
        else:
            if len(self._cache) >= KEY_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[wanted] = identity
        return identity

    def _lookup(self, wanted: str, generation: str) -> KeyIdentity | None:
        with Session(self.engine) as session:
            row = session.scalars(
                select(ApiKey).where(ApiKey.key_hash == wanted)
            ).first()
            if row is None or not hmac.compare_digest(row.key_hash, wanted):
                return None
            if row.revoked_at is not None:
                return None
            return KeyIdentity(
                row.id,
                row.name,
                tuple(row.models) if row.models else None,
                row.rpm,
                row.tpm,
                row.concurrency,
                row.expires_at,
                wanted,
                generation,
            )


def _live(identity: KeyIdentity | None) -> KeyIdentity | None:
    """``identity`` unless it is missing or expired."""
    if identity is None:
        return None
    if identity.expires_at is not None and identity.expires_at <= utcnow():
        return None
    return identity
