"""How often each target's connection was lost: a model process that
restarted (the author's edit, a redeploy) is a backend that may describe
itself differently now, and the catalog asks it again before its next
prediction is validated (:mod:`bridge.core.catalog`).

A watcher per channel, on the gRPC loop, follows its connectivity
(``wait_for_state_change``): each time it leaves ``READY`` the count goes
up. The watchers belong to the loop's :class:`~.grpc_loop.GrpcLoop` and
end with its channels.
"""

from __future__ import annotations

import asyncio

import grpc

__all__ = ["Reconnects"]

_READY = grpc.ChannelConnectivity.READY
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN


class Reconnects:
    """Connections lost, by target; counted on the loop, read anywhere."""

    def __init__(self) -> None:
        self._lost: dict[str, int] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    def lost(self, target: str) -> int:
        return self._lost.get(target, 0)

    def watch(self, target: str, channel: grpc.aio.Channel) -> None:
        """Follow *channel*'s connection (on the loop, as it is made)."""
        watcher = asyncio.get_running_loop().create_task(self._follow(target, channel))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _follow(self, target: str, channel: grpc.aio.Channel) -> None:
        state = channel.get_state()
        while state is not _SHUTDOWN:
            await channel.wait_for_state_change(state)
            was, state = state, channel.get_state()
            if was is _READY:  # it left READY (maybe back already: a new connection)
                self._lost[target] = self.lost(target) + 1

    def stop(self) -> None:
        """Stop following (on the loop, before its channels close)."""
        for watcher in self._watchers:
            watcher.cancel()
