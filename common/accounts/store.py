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
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from common.accounts.ledger import LedgerKind, LedgerRow, Source
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

    def create(
        self,
        name: str,
        balance: int | None = None,
        daily_free: int | None = None,
        **limits: Any,
    ) -> tuple[ApiKey, str]:
        """Create a key; return its row and the key itself (shown only now).

        ``balance`` and ``daily_free`` are micro-units; a key given a balance is
        metered, and its first ledger row credits that balance.
        """
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        row = ApiKey(
            id=f"key_{uuid.uuid4().hex[:20]}",
            name=name,
            key_hash=digest(raw),
            hint=f"{raw[:9]}…{raw[-4:]}",
            created_at=now,
            expires_at=naive_utc(limits.pop("expires_at", None)),
            balance_micro=balance,
            daily_free_micro=daily_free,
            **limits,
        )
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(row)
            if balance is not None:
                session.flush()
                session.add(
                    LedgerRow(
                        key_id=row.id,
                        kind=LedgerKind.CREDIT,
                        source=Source.BALANCE,
                        amount_micro=balance,
                        balance_after_micro=balance,
                        note="opening balance",
                        created_at=now,
                    )
                )
            session.commit()
        return row, raw

    def list(self) -> list[ApiKey]:
        with Session(self.engine) as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    def get(self, key_id: str) -> ApiKey | None:
        with Session(self.engine) as session:
            return session.get(ApiKey, key_id)

    def update(self, key_id: str, changes: dict[str, Any]) -> ApiKey | None:
        """Apply ``changes`` (name, limits, models, expiry, daily_free in
        micro-units) to a key; every process re-reads it on its next request
        (the generation counter moves). None if there is no such key."""
        columns = {
            "daily_free_micro" if name == "daily_free" else name: value
            for name, value in changes.items()
        }
        if "expires_at" in columns:
            columns["expires_at"] = naive_utc(columns["expires_at"])
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(ApiKey, key_id)
            if row is not None:
                for name, value in columns.items():
                    setattr(row, name, value)
                session.commit()
                self.redis.incr(KEYS_GENERATION_KEY)
            return row

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

    def identity(self, key_id: str) -> KeyIdentity | None:
        """The identity of a live key by its id (for work it left running, such
        as a batch's requests), checked at the current generation."""
        with Session(self.engine) as session:
            row = session.get(ApiKey, key_id)
        if row is None:
            return None
        return _live(self._checked(row.key_hash, None))

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
                row.balance_micro is not None,
            )


def _live(identity: KeyIdentity | None) -> KeyIdentity | None:
    """``identity`` unless it is missing or expired."""
    if identity is None:
        return None
    if identity.expires_at is not None and identity.expires_at <= utcnow():
        return None
    return identity


class InsufficientBalanceError(Exception):
    """A debit would take the balance below zero."""


def credit(
    engine: Engine, key_id: str, amount: int, note: str | None = None
) -> LedgerRow | None:
    """Add ``amount`` micro-units (negative: a debit) to a key's balance, with
    its ledger row, in one transaction; None if there is no such key.

    One ``UPDATE`` both checks and changes the balance, so concurrent credits
    and debits on any number of processes add up and none takes it below zero.
    A credit to an unmetered key meters it from then on.

    Raises:
        InsufficientBalanceError: a debit larger than the balance; nothing changed.
    """
    balance = func.coalesce(ApiKey.balance_micro, 0)
    with Session(engine, expire_on_commit=False) as session:
        after = session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, balance + amount >= 0)
            .values(balance_micro=balance + amount)
            .returning(ApiKey.balance_micro)
            .execution_options(synchronize_session=False)
        ).scalar()
        if after is None:
            session.rollback()
            if session.get(ApiKey, key_id) is None:
                return None
            raise InsufficientBalanceError
        row = LedgerRow(
            key_id=key_id,
            kind=LedgerKind.CREDIT,
            source=Source.BALANCE,
            amount_micro=amount,
            balance_after_micro=after,
            note=note,
            created_at=utcnow(),
        )
        session.add(row)
        session.commit()
        return row


def ledger_page(
    engine: Engine, key_id: str, after: int | None, limit: int
) -> tuple[list[LedgerRow], bool]:
    """A key's ledger rows, oldest first, after the row id ``after``; and
    whether more follow."""
    query = select(LedgerRow).where(LedgerRow.key_id == key_id)
    if after is not None:
        query = query.where(LedgerRow.id > after)
    with Session(engine) as session:
        rows = list(session.scalars(query.order_by(LedgerRow.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
