"""Redis as llmq uses it: the client, every key, shared round trips, socket checks."""
