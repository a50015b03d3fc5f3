"""A URL whose port another kind of server listens on: a web server, a mail server, anything but Redis.

redis-py reports such a server in three ways, none of which says what happened, and none of which is a
``redis.ConnectionError`` (the one a user's mistake in a URL was expected to be):

- ``InvalidResponse``: the reply is no Redis reply at all ("HTTP/1.1 400 Bad Request", "220 smtp ready").
- A plain ``ResponseError`` to HELLO, the first command of every connection: Redis answers it since 6, an
  older one says "unknown command" (redis-py then speaks the older protocol without it): anything else is
  a server of another protocol whose error line happens to start with "-" ("-ERR", as POP3's).
- ``ConnectionError("Bad response from PING health check")``: a reply that parses, but is not PONG.

The CLI turns each into one line (producer/cli.py), and a worker checks its broker and results store before
it loads its model (worker/app.py): such a server will not start speaking Redis by waiting, unlike a Redis
that is away, which a worker waits for.
"""

from __future__ import annotations

import redis

from imgq.settings import Settings, mask_url

MAX_QUOTED = 80  # characters of the server's reply in the message: enough to recognise it, one line always
BAD_PING = "Bad response from PING health check"  # redis-py's message (redis/connection.py)
HINT = "check the URL's host and port: another kind of server listens there"


def foreign_reply(exc: BaseException) -> str | None:
    """What the server answered (quoted and cut to one short line), when ``exc`` (or an error it was raised
    from, as kombu raises its own) shows that the server does not speak the Redis protocol; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        reply = _foreign(current)
        if reply is not None:
            return reply
        seen.add(id(current))
        current = current.__cause__
    return None


def _foreign(error: BaseException) -> str | None:
    if isinstance(error, redis.exceptions.InvalidResponse):
        return _quoted(_unquoted(str(error).removeprefix("Protocol Error: ")))
    if isinstance(error, redis.ConnectionError) and str(error).startswith(BAD_PING):
        return "something other than PONG to PING"
    # Exactly ResponseError: redis-py gives a Redis's known refusals (NOPERM, WRONGPASS, ...) classes of
    # their own, which a refusal of HELLO by a Redis whose ACL forbids it would be.
    if type(error) is redis.ResponseError and _refused_hello(error):
        return f"{_quoted(str(error))} to HELLO"
    return None


def _refused_hello(error: BaseException) -> bool:
    """True when ``error`` was the reply to HELLO: redis-py re-raises it from ``_fallback_to_resp2`` when it
    is not "unknown command" (an older Redis). Any other refusal while connecting (SELECT of a database the
    server has not) is a Redis's, and stays one."""
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_name == "_fallback_to_resp2":
            return True
        traceback = traceback.tb_next
    return False


def _unquoted(raw: str) -> str:
    """The line without the ``b'...'`` that redis-py's repr of the bytes puts around it."""
    if len(raw) >= 3 and raw[0] == "b" and raw[1] in "'\"" and raw[-1] == raw[1]:
        return raw[2:-1]
    return raw


def _quoted(reply: str) -> str:
    line = " ".join(reply.split())
    return '"' + (line if len(line) <= MAX_QUOTED else line[:MAX_QUOTED - 3] + "...") + '"'


def not_redis_message(url: str, exc: BaseException) -> str | None:
    """The one line saying that the server at ``url`` does not speak the Redis protocol (password masked),
    when ``exc`` shows it (``foreign_reply``); else None."""
    reply = foreign_reply(exc)
    if reply is None:
        return None
    return f"The server at {mask_url(url)} does not speak the Redis protocol (it answered {reply}): {HINT}"


def check_speaks_redis(settings: Settings, timeout: float = 5.0) -> str | None:
    """The one line of ``not_redis_message`` for the broker's or the results store's server, when one of them
    answers in another protocol; None when both speak Redis, or cannot be reached now (a Redis that is away,
    or refuses: whoever uses it says so, and a worker waits for its broker)."""
    for url in dict.fromkeys((settings.broker_url, settings.effective_results_url)):
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        except redis.RedisError as exc:
            message = not_redis_message(url, exc)
            if message is not None:
                return message
        finally:
            client.close()
    return None
