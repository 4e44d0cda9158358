"""Guards on the private library internals llmq patches, overrides or leans on.

Each guard names a library, the llmq module built on its internals, and those
internals (``module:qualified.name``), each pinned to a fingerprint of its source
(of its ``repr`` for a value) in the locked versions (requirements.lock). An upgrade
that removes or changes one fails here, naming the module to re-check, instead
of leaving a patch a silent no-op or quietly wrong; once the module is
re-checked against the new code, the pins take the values the failure prints.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
from typing import NamedTuple

import pytest
from redis._parsers import hiredis as hiredis_parser

from common.redis import socket_check

#: Hex digits of a source's sha256 kept as its fingerprint.
FINGERPRINT_DIGITS = 12


class Guard(NamedTuple):
    """The internals one llmq module relies on, as pinned for the locked version."""

    library: str
    recheck: str
    #: Library module -> qualified name in it -> fingerprint.
    pins: dict[str, dict[str, str]]


GUARDS = [
    Guard(
        "redis-py's hiredis parser",
        "common/redis/socket_check.py",
        {
            "redis._parsers.hiredis": {
                # Replaced by socket_check.install(); can_read calls it by its global.
                "_socket_can_read": "cd3719f2aadd",
                "_HiredisParser.can_read": "1b52df8889e2",
            },
            # Without hiredis the replaced function is never called.
            "redis.connection": {"DefaultParser": "ef754c2ba3be"},
        },
    ),
    Guard(
        "redis-py's pub/sub",
        "common/jobs/events.py",
        {
            "redis.client": {
                "PubSub.__init__": "16024b2a7ac0",
                "PubSub.execute_command": "8dc5f2d153c2",
                "PubSub.reset": "287aba5abb03",
            },
            # The default handler the hub's _as_received stands in for.
            "redis._parsers.hiredis": {
                "_HiredisParser.handle_pubsub_push_response": "097927e338fb",
            },
        },
    ),
    Guard(
        "kombu's Redis transport",
        "workers/broker/transport.py",
        {
            "kombu.transport.virtual.base": {
                "QoS.append": "b388f0cd6485",
                "QoS.ack": "0714292b916f",
                "QoS.can_consume_max_estimate": "936d3958266c",
                "Channel.qos": "44d9d4c8ab98",
                "Transport.create_channel": "19e3476a506e",
                "Transport._deliver": "799e242f3ec5",
            },
            "kombu.transport.redis": {
                # The unacked entry: its format, its writes, its restore.
                "QoS.append": "35c655f6ecc6",
                "QoS.ack": "1bc15a4ddf54",
                "QoS.restore_visible": "d4a4a40a3eaf",
                "QoS.restore_by_tag": "58e161d81b6f",
                "Channel._do_restore_message": "8b430df94e45",
                "Channel.unacked_key": "d74ac3dfa7ca",
                "Channel.unacked_index_key": "9d26d870ab19",
                # Sets _queue_cycle, brpop_timeout, the handlers and QoS.
                "Channel.__init__": "f189bdebe243",
                "Channel._brpop_start": "06723d707ddf",
                "Channel._brpop_read": "c42518699709",
                "Channel._flush_brpop_reauth": "bb4930b4fd3c",
                "Channel._q_for_pri": "f3997660680d",
                "Channel._in_poll": "60a33e6cf515",
                "Channel._brpop_sent_at": "dc937b598926",
                "Channel.priority_steps": "a7eb6b4b382a",
                "Channel._create_client": "dae92bc4075d",
                "Channel.client": "7a86dff4bd9c",
                "Channel.conn_or_acquire": "25883caca6c4",
                # The prefixing client's reply parser, which _brpop_read bypasses.
                "GlobalKeyPrefixMixin.parse_response": "c279fe1be669",
                # The poller that drives _brpop_start and _brpop_read.
                "MultiChannelPoller._register_BRPOP": "85724582464a",
                "MultiChannelPoller._client_registered": "a16964c3e3d2",
                "MultiChannelPoller.on_readable": "c0d99f241607",
                "MultiChannelPoller.maybe_check_brpop_health": "0dc592e46353",
            },
        },
    ),
    Guard(
        "Celery's and kombu's message building",
        "workers/broker/messages.py",
        {
            "celery.app.amqp": {"AMQP.as_task_v2": "5efb2a7a30d3"},
            "celery.app.base": {"Celery.thread_oid": "c72d66bcc3a3"},
            "kombu.transport.virtual.base": {
                "Channel.prepare_message": "40e1ae6d7753",
                "Channel.basic_publish": "83825b675871",
                "Channel._inplace_augment_message": "3a07d99062fc",
            },
            # Where the private ``_publish_batch`` keyword is taken.
            "kombu.transport.redis": {"Channel._put": "1c0cf9749576"},
        },
    ),
    Guard(
        "Celery's result backend",
        "workers/celery_app.py",
        {
            "celery.app.base": {
                "Celery.backend": "6e69b50aa7ed",
                "Celery._backend": "cd24e3948d01",
                "Celery._get_backend": "af57010675e7",
            },
        },
    ),
    Guard(
        "Celery's worker",
        "workers/tasks.py",
        {
            # The loggers whose INFO lines the tasks module turns off.
            "celery.worker.strategy": {"logger.name": "5253825bad48"},
            "celery.app.trace": {
                "logger.name": "5a136160fc5f",
                "info": "05c0a801fe99",
            },
            # Puts the message's properties (its delivery tag) in task.request.
            "celery.worker.request": {"Request.__init__": "efdf47149cde"},
        },
    ),
    Guard(
        "gevent's pywsgi",
        "web/server.py",
        {
            "gevent.pywsgi": {
                "WSGIHandler.__init__": "c3d9e1009c3a",
                "WSGIHandler.handle_one_request": "14e946e9fb33",
                "WSGIHandler.read_requestline": "72173107a177",
                "WSGIHandler.read_request": "b1702b63da71",
                "WSGIHandler._sendall": "fa0861487226",
                "WSGIHandler._write": "b6ab2ebe4b1b",
                "WSGIHandler._write_with_headers": "5ccb48bf841c",
                "WSGIHandler.response_length": "5feceb66ffc8",
            },
        },
    ),
    Guard(
        "gunicorn's gevent_pywsgi worker",
        "web/server.py",
        {
            "gunicorn.workers.ggevent": {
                "GeventPyWSGIWorker.wsgi_handler": "7af1c701e36e",
                "GeventWorker.run": "50119854ef8b",
                "PyWSGIHandler.log_request": "d706f674002e",
            },
            "gunicorn.glogging": {"Logger.access_log_enabled": "9ec2167b9535"},
        },
    ),
    Guard(
        "geventhttpclient",
        "common/providers/http_client.py",
        {
            # Builds the _connection_pool whose __class__ _client swaps.
            "geventhttpclient.client": {
                "HTTPClient.__init__": "141dff10482a",
                "HTTPClient.request": "c63c0b699867",
            },
            "geventhttpclient.connectionpool": {
                "ConnectionPool.__init__": "69efe7e5e561",
                "ConnectionPool.get_socket": "eca698c4b5f3",
                "ConnectionPool._is_socket_alive": "660d10437b5a",
                "SSLConnectionPool.__init__": "13307e8452fa",
            },
            # _arrivals reads _body_buffer and _sock, and feeds the parser itself.
            "geventhttpclient.response": {
                "HTTPResponse.__init__": "a129da9e858a",
                "HTTPResponse._on_body": "2a462978470e",
                "HTTPResponse.feed": "d99565b4fcd7",
                "HTTPSocketResponse.__init__": "e8ef3d4a19ab",
                "HTTPSocketResponse._on_message_complete": "5e7828f404a9",
                "HTTPSocketPoolResponse.release": "298cafed965a",
            },
        },
    ),
    Guard(
        "Flask's JSON provider",
        "web/app.py",
        {
            "flask.json.provider": {
                "JSONProvider._prepare_response_obj": "2d8e7e3c2977",
                "DefaultJSONProvider.response": "9254e25fd3cf",
            },
        },
    ),
]


#: Module globals llmq assigns: (library, module to re-check, the global, the
#: modules its value may come from: the library's own, or llmq's once installed).
#: An assignment to a global the library no longer reads would change nothing.
REPLACED = [
    (
        "redis-py's hiredis parser",
        "common/redis/socket_check.py",
        "redis._parsers.hiredis:_socket_can_read",
        {"redis._parsers.hiredis"},  # socket_check wraps it (``__wrapped__``)
    ),
]


def _resolve(target: str) -> object:
    """The object ``module:qualified.name`` names, as stored (descriptors unbound)."""
    module_name, _, path = target.partition(":")
    found: object = importlib.import_module(module_name)
    for name in path.split("."):
        found = inspect.getattr_static(found, name)
    return found


def _fingerprint(found: object) -> str:
    """A function's source digest, or a value's ``repr`` digest.

    A function llmq wrapped in place (``__wrapped__``) is read through to the
    library's own, so the pin holds whether or not the patch is installed.
    """
    if isinstance(found, property):
        found = found.fget
    elif isinstance(found, functools.cached_property):
        found = found.func
    elif isinstance(found, staticmethod | classmethod):
        found = found.__func__
    if inspect.isfunction(found):
        text = inspect.getsource(inspect.unwrap(found))
    else:
        text = repr(found)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_DIGITS]


def _found(target: str) -> str:
    try:
        return _fingerprint(_resolve(target))
    except (ImportError, AttributeError):
        return "missing"
    except OSError as exc:  # no source file to read
        return f"unreadable ({exc})"


@pytest.mark.parametrize("guard", GUARDS, ids=lambda g: f"{g.recheck}:{g.library}")
def test_the_library_internals_a_module_relies_on_are_the_pinned_ones(
    guard: Guard,
) -> None:
    changed = [
        f"  {target}: pinned {pinned!r}, found {found!r}"
        for module, names in guard.pins.items()
        for name, pinned in names.items()
        if (found := _found(target := f"{module}:{name}")) != pinned
    ]
    assert not changed, (
        f"{guard.library} changed: {guard.recheck} must be re-checked, then these"
        " pins in tests/test_patched_internals.py set to what was found:\n"
        + "\n".join(changed)
    )


@pytest.mark.parametrize(
    ("library", "recheck", "target", "origins"),
    REPLACED,
    ids=[recheck for _, recheck, _, _ in REPLACED],
)
def test_a_global_llmq_replaces_is_still_the_librarys_to_replace(
    library: str, recheck: str, target: str, origins: set[str]
) -> None:
    try:
        found = _resolve(target)
    except (ImportError, AttributeError):
        found = None
    if callable(found):
        found = inspect.unwrap(found)
    origin = getattr(found, "__module__", None)
    where = f"comes from {origin}" if origin else "is missing"
    assert origin in origins, (
        f"{library} changed: {recheck} must be re-checked ({target} {where},"
        " so replacing it would change nothing)"
    )


def test_an_install_with_nothing_to_replace_warns_instead_of_passing_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(hiredis_parser, "_socket_can_read", raising=False)
    with caplog.at_level(logging.WARNING, logger=socket_check.__name__):
        socket_check.install()
    assert "no _socket_can_read" in caplog.text
    assert not hasattr(hiredis_parser, "_socket_can_read")
