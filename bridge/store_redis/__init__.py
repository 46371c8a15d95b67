"""Predictions shared through Redis: every bridge process given the same
Redis (``[store] url``) gets, lists, streams and cancels every prediction,
whichever process runs it, and finds them again after a restart.

The package is the :class:`~bridge.core.store.PredictionStore` kept in
Redis, one module per job:

- :mod:`.store`: :class:`RedisStore`, the interface, and the tasks it runs
  (:func:`open_redis_store`).
- :mod:`.adds`: new predictions, the creates that arrive together added
  in one script call.
- :mod:`.writer`: the predictions this process runs, mirrored to Redis by
  one task, a pipeline per batch; what is let go of when it cannot be.
- :mod:`.replicas`: copies of other processes' predictions for the
  readers here, followed by one blocking read; commands between processes.
- :mod:`.leases`: a process that dies, and the survivors that end its
  predictions.
- :mod:`.endings`: how the store ends a prediction its own task cannot
  (through the lifecycle table, in Redis first, then here as there).
- :mod:`.trim` and :mod:`.listing`: retention past the counts; pages.
- :mod:`.keys`, :mod:`.scripts`, :mod:`.codec`, :mod:`.db`: the keys, the
  Lua scripts, what values hold, and what every part works with.
- :mod:`.errors`: the one place Redis' errors become the bridge's.

Retention is expiry: at its end a prediction's input and events expire
after ``retention_seconds`` (then it shows ``data_removed``) and its record
after ``metadata_retention_seconds``; past the counts, the oldest ended ones
are deleted. ``max_retained_bytes`` bounds what this process keeps of the
predictions it runs (Redis' own ``maxmemory`` bounds the rest: see
docs/deploy.md).

The client is coredis, measured against redis-py's asyncio client
(``bench/redis_clients.py``): it runs on Trio itself, so a store call is a
plain ``await`` in the bridge's tasks (redis-py's would hop to the gRPC
loop's thread and back), and pipelined, what counts here, it costs within
3 µs of redis-py per command.
"""

from .errors import BadStoreUrl, check_reachable
from .store import RedisStore, open_redis_store

__all__ = ["BadStoreUrl", "RedisStore", "check_reachable", "open_redis_store"]
