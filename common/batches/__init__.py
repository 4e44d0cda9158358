"""Bulk offline processing: files, batches, their dispatcher and the ``llmq`` CLI."""
