"""Entry module for the ``celery`` command: the app, built from the environment."""

from __future__ import annotations

from common import readiness
from workers import kombu_json
from workers.celery_app import make_celery

readiness.install()
kombu_json.install()
app = make_celery()
