"""``flask --app web keys ...`` and ``flask --app web usage``: keys, their
money and their usage from the command line."""

from __future__ import annotations

import datetime as dt

import click
from flask import current_app
from flask.cli import AppGroup

from common.accounts.pricing import MoneyError, format_money, parse_money
from common.accounts.reports import (
    BucketWidth,
    GroupBy,
    end_of_now,
    usage_csv,
    usage_page,
)
from common.accounts.store import InsufficientBalanceError, KeyStore

keys_cli = AppGroup("keys", help="Create, list and revoke API keys.")


def _store() -> KeyStore:
    return current_app.extensions["llmq"].keys  # type: ignore[no-any-return]


def _money(text: str | None, option: str) -> int | None:
    """Micro-units of an amount given on the command line."""
    if text is None:
        return None
    try:
        return parse_money(text)
    except MoneyError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@keys_cli.command("create")
@click.option("--name", required=True, help="A label for the key.")
@click.option("--balance", default=None, help="Money to meter the key with, e.g. 12.5.")
@click.option("--daily-free", default=None, help="A free allowance each day.")
@click.option("--models", default=None, help="Comma-separated model allow-list.")
@click.option("--expires-at", type=click.DateTime(), default=None, help="UTC expiry.")
@click.option("--quiet", is_flag=True, help="Print only the key.")
def create_key(
    name: str,
    balance: str | None,
    daily_free: str | None,
    models: str | None,
    expires_at: dt.datetime | None,
    quiet: bool,
) -> None:
    """Create a key and print it (it is shown only this once)."""
    allow = [m.strip() for m in models.split(",") if m.strip()] if models else None
    row, raw = _store().create(
        name,
        balance=_money(balance, "--balance"),
        daily_free=_money(daily_free, "--daily-free"),
        models=allow,
        expires_at=expires_at,
    )
    click.echo(raw if quiet else f"{row.id}\t{row.name}\t{raw}")


@keys_cli.command("list")
def list_keys() -> None:
    """List keys: id, name, hint, whether revoked, and the balance if metered."""
    for row in _store().list():
        state = "revoked" if row.revoked_at else "active"
        shown = row.to_dict()["balance"] or "unmetered"
        click.echo(f"{row.id}\t{row.name}\t{row.hint}\t{state}\t{shown}")


@keys_cli.command("credit")
@click.argument("key_id")
@click.argument("amount")
@click.option("--note", default=None, help="Why, for the ledger.")
def credit_key(key_id: str, amount: str, note: str | None) -> None:
    """Add AMOUNT to a key's balance (negative: a debit); prints the balance."""
    micro = _money(amount, "AMOUNT")
    assert micro is not None
    try:
        row = current_app.extensions["llmq"].jobs.billing.credit(key_id, micro, note)
    except InsufficientBalanceError:
        raise click.ClickException("the debit is larger than the balance") from None
    if row is None:
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"{key_id}\tbalance {format_money(row.balance_after_micro)}")


@keys_cli.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke a key by id."""
    if _store().revoke(key_id) is None:
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"revoked {key_id}")


@click.command("usage")
@click.option("--group-by", type=click.Choice([g.value for g in GroupBy]), default=None)
@click.option("--days", default=7, show_default=True, help="Days back from now.")
def usage_command(group_by: str | None, days: int) -> None:
    """Every key's usage by day, as CSV (what GET /admin/usage?format=csv gives)."""
    end = end_of_now()
    start = end - days * 86_400
    page = usage_page(
        _store().engine,
        start=start,
        end=end,
        width=BucketWidth.DAY,
        group_by=GroupBy(group_by) if group_by else None,
        key_id=None,
        limit=days + 1,
        page=0,
    )
    click.echo(usage_csv(page), nl=False)
