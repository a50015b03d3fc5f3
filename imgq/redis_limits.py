"""Redis at its limits: will the server evict keys imgq needs when it is full?

imgq keeps its queue, jobs and results in Redis and counts on every key staying until imgq deletes it or
its expiry comes. A server whose ``maxmemory-policy`` evicts keys breaks that when memory runs out:

- ``allkeys-*`` evicts any key: queued batches, job records and results vanish, and images never get a
  record (nothing fails: the keys are just gone).
- ``volatile-*`` evicts keys that have an expiry before their time: imgq's worker heartbeats, locks and
  batches being staged by a submit. A worker then looks gone and its batches run twice, two reconcilers
  or schedulers run at once, a submit in progress loses batches.

Only ``noeviction`` keeps them: a full server then refuses writes with OOM, which imgq reports (the CLI
in one line, a worker by failing the batch, to be delivered again). A worker checks at start, logs a
warning and puts it into its heartbeat, and `imgq status --workers` shows it.

A server that refuses CONFIG GET (a managed Redis, an ACL without it) cannot be checked: nothing is said.
"""

from __future__ import annotations

import redis

from imgq.settings import Settings, mask_url

SAFE_POLICY = "noeviction"

_VICTIMS = {
    "allkeys": "any key, imgq's queued batches, jobs and results included: images would silently never get "
               "a record",
    "volatile": "keys with an expiry before their time, imgq's heartbeats, locks and staged batches among "
                "them: workers would look gone and batches run twice",
}


def eviction_policy(client: redis.Redis) -> tuple[str, int] | None:
    """(maxmemory-policy, maxmemory in bytes) of the server, or None when it refuses to say."""
    try:
        config = client.config_get("maxmemory*")
    except redis.ResponseError:  # NOPERM, or CONFIG renamed away by a managed service
        return None
    config = {_text(k): _text(v) for k, v in config.items()}
    return config.get("maxmemory-policy", SAFE_POLICY), int(config.get("maxmemory", "0") or 0)


def eviction_warning(client: redis.Redis, what: str = "Redis") -> str | None:
    """One line saying that the server behind ``client`` may evict imgq's keys, and what to do; None when
    its policy is noeviction or it cannot be known. ``what`` names the server in the line."""
    known = eviction_policy(client)
    if known is None or known[0] == SAFE_POLICY:
        return None
    policy, maxmemory = known
    victims = _VICTIMS.get(policy.partition("-")[0], "keys imgq needs")
    limit = f"maxmemory {maxmemory} bytes" if maxmemory else "a maxmemory (none is set now)"
    return (f"{what} has maxmemory-policy {policy}: when it reaches {limit} it evicts {victims}. "
            f"Set maxmemory-policy {SAFE_POLICY} (a full Redis then refuses writes with OOM, and imgq says so).")


def redis_warning(settings: Settings) -> str | None:
    """eviction_warning for the broker's Redis and the results Redis (one line each, if they differ);
    None when both are safe, cannot be checked, or cannot be reached now."""
    urls = {settings.broker_url: "The broker's Redis"}
    results = settings.effective_results_url
    urls[results] = "The results Redis" if results != settings.broker_url else "Redis"
    warnings = []
    for url, what in urls.items():
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        try:
            warning = eviction_warning(client, f"{what} at {mask_url(url)}")
        except redis.RedisError:  # not reachable at this moment: the worker will say so when it uses it
            warning = None
        finally:
            client.close()
        if warning:
            warnings.append(warning)
    return " ".join(warnings) or None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
