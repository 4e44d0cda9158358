"""Upstream providers: one module per kind, built from the catalog."""

from __future__ import annotations

from common.catalog import ProviderConfig
from common.providers.base import Provider
from common.providers.openai_compat import OpenAICompatProvider
from common.providers.simulated import SimulatedProvider


def build_provider(config: ProviderConfig) -> Provider:
    """The provider implementation for a catalog entry."""
    if config.kind == "simulated":
        return SimulatedProvider(config)
    return OpenAICompatProvider(config)
