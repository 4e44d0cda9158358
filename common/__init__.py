"""Code shared by the web front end and the Celery workers."""
