"""Everything that knows kombu's or Celery's private internals: the Redis transport,
and the task messages the web builds."""
