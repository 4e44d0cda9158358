"""Everything that knows kombu's or Celery's private internals: the Redis transport,
the task messages the web builds, and JSON decoding."""
