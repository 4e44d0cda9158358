"""The Flask front end: ``web.app.create_app`` builds the app with all its surfaces;
``web.server`` is the gunicorn worker that serves it.

Nothing is imported here at import time: gunicorn's master imports ``web.server``
before its workers fork and patch the standard library for gevent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from common.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """``web.app.create_app``, imported only when called.

    So the documented ``flask --app web keys ...`` finds the factory here (Flask
    looks for ``create_app`` in the module it is given) while importing ``web``
    stays free of side effects.
    """
    from web.app import create_app as build

    return build(settings)
