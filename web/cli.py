"""``flask --app web keys ...``: manage API keys from the command line."""

from __future__ import annotations

import datetime as dt

import click
from flask import current_app
from flask.cli import AppGroup

from common.accounts.store import KeyStore

keys_cli = AppGroup("keys", help="Create, list and revoke API keys.")


def _store() -> KeyStore:
    return current_app.extensions["llmq"].keys  # type: ignore[no-any-return]


@keys_cli.command("create")
@click.option("--name", required=True, help="A label for the key.")
@click.option("--models", default=None, help="Comma-separated model allow-list.")
@click.option("--expires-at", type=click.DateTime(), default=None, help="UTC expiry.")
@click.option("--quiet", is_flag=True, help="Print only the key.")
def create_key(
    name: str, models: str | None, expires_at: dt.datetime | None, quiet: bool
) -> None:
    """Create a key and print it (it is shown only this once)."""
    allow = [m.strip() for m in models.split(",") if m.strip()] if models else None
    row, raw = _store().create(name, models=allow, expires_at=expires_at)
    click.echo(raw if quiet else f"{row.id}\t{row.name}\t{raw}")


@keys_cli.command("list")
def list_keys() -> None:
    """List keys: id, name, hint, and whether revoked."""
    for row in _store().list():
        state = "revoked" if row.revoked_at else "active"
        click.echo(f"{row.id}\t{row.name}\t{row.hint}\t{state}")


@keys_cli.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke a key by id."""
    if _store().revoke(key_id) is None:
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"revoked {key_id}")
