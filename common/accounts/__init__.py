"""Accounts: API keys (their table, store and cache); billing lands here too."""
