"""Entry module for the ``celery`` command: the app, built from the environment."""

from __future__ import annotations

from common.redis import socket_check
from workers.celery_app import make_celery

socket_check.install()
app = make_celery()
