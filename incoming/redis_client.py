"""
The connection to Redis that the Redis stores share: a ``--state`` URL, a
pool of command connections and one subscriber connection, both through
`txredisapi` (Twisted-native; they reconnect by themselves).

Every command has a deadline: while Redis is unreachable a call fails
after `COMMAND_TIMEOUT` seconds with `RedisUnavailable` (a StoreError, so a
backend gets 503 and a browser a resumable error) instead of waiting for
the reconnect.  Channels subscribed to are subscribed again after a
reconnect.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from time import perf_counter
from urllib.parse import unquote, urlsplit

import attr
import txredisapi
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from .interfaces import StoreUnavailable
from .metrics import NO_METRICS

COMMAND_TIMEOUT = 5.0
POOL_SIZE = 1  # one connection: commands reach Redis in the order they were made

_log = Logger()


class RedisUnavailable(StoreUnavailable):
    """Redis did not answer in time (down, unreachable, or too slow)."""


@attr.s(frozen=True, auto_attribs=True)
class RedisAddress:
    """Where Redis is, as a ``redis://`` or ``rediss://`` (TLS) URL says."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = attr.ib(default=None, repr=False)
    tls: bool = False

    def __str__(self) -> str:  # for logs: never the password
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]``; ValueError if not."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a redis:// or rediss:// URL")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{path!r} in {url!r} is not a database number")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{url!r} has no valid port") from None
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


class _Subscriber(txredisapi.SubscriberProtocol):
    """Hands messages to the hub; tells it when it is (re)connected."""

    hub: RedisHub

    def connectionMade(self):
        d = super().connectionMade()
        if isinstance(d, Deferred):
            d.addCallback(lambda _: self.hub._subscriber_ready(self))
        return d

    def connectionLost(self, why):
        self.hub._subscriber_lost(self)
        super().connectionLost(why)

    def messageReceived(self, pattern, channel, message):
        self.hub._message(channel, message)


class RedisHub:
    """Commands, scripts and channels over one Redis, under one key prefix."""

    def __init__(
        self, address: RedisAddress, prefix: str, clock, timeout=COMMAND_TIMEOUT, metrics=None
    ):
        self.address = address
        self.metrics = metrics if metrics is not None else NO_METRICS
        self.prefix = prefix
        self._clock = clock
        self._timeout = timeout
        tls = optionsForClientTLS(address.host) if address.tls else False
        options = dict(
            dbid=address.db,
            password=address.password,
            username=address.username,
            ssl_context_factory=tls,
            connectTimeout=timeout,
            convertNumbers=False,
        )
        self._pool = txredisapi.lazyConnectionPool(
            address.host, address.port, poolsize=POOL_SIZE, **options
        )
        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = type("Subscriber", (_Subscriber,), {"hub": self})
        factory.password, factory.username = address.password, address.username
        factory.dbid = None  # channels are not per database
        factory.replyTimeout = None
        factory.convertNumbers = False
        factory.startConnecting(
            txredisapi._makeEndpoint(address.host, address.port, timeout, tls or None)
        )
        self._subscriber_factory = factory
        self._subscriber: _Subscriber | None = None
        self._listening = False  # the subscriber's channels (the replies') are subscribed
        self._waiting_for_subscriber: list[Deferred] = []
        self._channels: dict[str, list[Callable[[str], None]]] = {}
        self.instance = os.urandom(8).hex()  # names this process's reply channel
        self._replies: dict[str, Callable[[dict], None]] = {}
        self._reply_channel = self.key("reply", self.instance)
        self._channels[self._reply_channel] = [self._reply]
        self._requests = 0

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # ---- commands ---------------------------------------------------------

    def _deadline(self, d: Deferred, what: str) -> Deferred:
        started = perf_counter()

        def answered(result):
            self.metrics.redis_answered(perf_counter() - started)
            return result

        def late(failure):
            if failure.check(txredisapi.ConnectionError, txredisapi.TimeoutError):
                raise RedisUnavailable(f"Redis at {self.address} is unavailable: {what}")
            if failure.check(DeferredTimeout):
                raise RedisUnavailable(
                    f"Redis at {self.address} did not answer within {self._timeout:g} s"
                )
            return failure

        return d.addTimeout(self._timeout, self._clock).addCallbacks(answered, late)

    def command(self, name: str, *args) -> Deferred:
        d = self._pool.execute_command(name, *args)
        return self._deadline(d, name)

    def eval(self, script: str, keys: list, args: list) -> Deferred:
        return self._deadline(self._pool.eval(script, keys, args), "a script")

    def close(self) -> Deferred:
        return gatherResults(
            [self._pool.disconnect(), self._subscriber_factory.disconnect()], consumeErrors=True
        ).addErrback(lambda _: None)

    # ---- channels ---------------------------------------------------------

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> Deferred:
        """Call ``handler(message)`` for each message on ``channel``; fire
        with a callable that unsubscribes, once the subscription is active
        (or at once while Redis is away: it is made on reconnect)."""
        handlers = self._channels.setdefault(channel, [])
        handlers.append(handler)

        def unsubscribe():
            if handler in handlers:
                handlers.remove(handler)
            if not handlers and self._channels.get(channel) is handlers:
                del self._channels[channel]
                if self._subscriber is not None:
                    self._subscriber.unsubscribe(channel).addErrback(lambda _: None)

        if len(handlers) > 1:
            return succeed(unsubscribe)
        if self._subscriber is None:  # subscribed when it (re)connects
            ready: Deferred = Deferred()
            self._waiting_for_subscriber.append(ready)
            ready.addTimeout(self._timeout, self._clock).addErrback(lambda _: None)
            return ready.addCallback(lambda _: unsubscribe)
        d = self._deadline(self._subscriber.subscribe(channel), "SUBSCRIBE")
        return d.addCallback(lambda _: unsubscribe)

    def publish(self, channel: str, message: str) -> Deferred:
        """Fire with the number of subscribers that got it."""
        return self.command("PUBLISH", channel, message).addCallback(int)

    def request(self, channel: str, message: dict, timeout: float) -> Deferred:
        """Publish ``message`` with a reply address; fire with the replies of
        every subscriber that got it (those that do not reply in time are
        left out)."""
        self._requests += 1
        request_id = f"{self.instance}:{self._requests}"
        replies: list = []
        expected: list[int] = []
        done: Deferred = Deferred()

        def settle():
            self._replies.pop(request_id, None)
            if not done.called:
                done.callback(replies)

        def on_reply(reply):
            replies.append(reply)
            if expected and len(replies) >= expected[0]:
                settle()

        self._replies[request_id] = on_reply
        body = dict(message, reply_to=self._reply_channel, request=request_id)

        def sent(count):
            expected.append(count)
            if len(replies) >= count:
                settle()
            else:
                self._clock.callLater(timeout, settle)

        def failed(failure):
            self._replies.pop(request_id, None)
            if not done.called:
                done.errback(failure)

        def send(_=None):
            self.publish(channel, json.dumps(body)).addCallbacks(sent, failed)

        def not_listening(_):
            failed(Failure(RedisUnavailable("Redis: no subscription for the replies")))

        if self._listening:
            send()
        else:  # the replies would come before their channel is listened to
            ready: Deferred = Deferred()
            self._waiting_for_subscriber.append(ready)
            wait = min(timeout, self._timeout)  # within the request's own time
            ready.addTimeout(wait, self._clock).addCallbacks(send, not_listening)
        return done

    def reply(self, request: dict, answer: dict) -> None:
        """Answer a `request` message."""
        body = json.dumps(dict(answer, request=request.get("request")))
        self.publish(str(request.get("reply_to")), body).addErrback(
            lambda f: _log.warn("Redis: cannot reply: {why}", why=str(f.value))
        )

    def _reply(self, message: str) -> None:
        try:
            body = json.loads(message)
            handler = self._replies.get(body.get("request"))
        except (ValueError, AttributeError):
            return
        if handler is not None:
            handler(body)

    def _message(self, channel, message) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8")
        if isinstance(message, bytes):
            message = message.decode("utf-8")
        for handler in list(self._channels.get(channel, ())):
            try:
                handler(message)
            except Exception:
                _log.failure("Redis: handling a message on {channel}", channel=channel)

    def _subscriber_ready(self, subscriber: _Subscriber) -> None:
        self._subscriber = subscriber
        waiting, self._waiting_for_subscriber = self._waiting_for_subscriber, []

        def subscribed(_):
            if self._subscriber is subscriber:
                self._listening = True
                # and the requests that came while it was being made
                waiting.extend(self._waiting_for_subscriber)
                self._waiting_for_subscriber = []
            for d in waiting:
                if not d.called:
                    d.callback(None)

        d = subscriber.subscribe(list(self._channels))
        d.addCallback(subscribed)
        d.addErrback(lambda f: _log.error("Redis: cannot subscribe: {why}", why=str(f.value)))

    def _subscriber_lost(self, subscriber: _Subscriber) -> None:
        if self._subscriber is subscriber:
            self._subscriber = None
            self._listening = False


def failure_text(failure: Failure) -> str:
    return str(failure.value) or repr(failure.value)
