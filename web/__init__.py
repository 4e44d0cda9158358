"""The Flask front end: ``web.app.create_app`` builds the app with all its surfaces;
``web.server`` is the gunicorn worker that serves it.

Nothing is imported here: gunicorn's master imports ``web.server`` before its
workers fork and patch the standard library for gevent.
"""
