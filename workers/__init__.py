"""Celery workers: the app factory and the tasks that run jobs."""
