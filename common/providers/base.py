"""What every provider offers the worker: a stream of OpenAI chunk objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from common.catalog import ModelConfig
from common.execution.cancel import CancelToken


class Provider(Protocol):
    """An upstream that answers chat requests as ``chat.completion.chunk`` dicts."""

    def stream(
        self, model: ModelConfig, body: dict[str, Any], cancel: CancelToken
    ) -> Iterator[dict[str, Any]]:
        """Yield the upstream's chunks for ``body``; stop early once cancelled.

        Raises:
            ProviderError: any failure, already translated.
        """
        ...
