"""The configured models, and what their backends say they are.

A model's ``Describe`` answer (its version and schemas) is kept and used
for ``describe_ttl_seconds``; the first use after that asks again in the
background (a task in the nursery the catalog is given) and goes on with
the kept answer meanwhile, so a backend redeployed with a new schema is
validated against the new one within about that time, without a restart,
and no request waits for it. A backend whose connection was lost since
(its process restarted: the model author's edit, a redeploy) or whose
health changed is asked again at once, before the next request is
validated against its answer. One ``Describe`` per model is in flight at a
time: callers that need it meanwhile share its answer. A backend that
cannot answer leaves the last answer in use (logged), or none if it never
answered.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Mapping

import trio

from ..backends.interface import Backend, ModelInfo
from ..config import Settings
from ..errors import BackendTimeout, BackendUnavailable, NotFound, PredictionError
from ..validation import check_patterns, listed_names
from .models import ModelEntry

__all__ = ["Catalog"]

log = logging.getLogger(__name__)

#: The longest a health check waits for one backend.
HEALTH_CHECK_SECONDS = 1.0
#: A backend that changed (see Catalog.info) but cannot answer is asked
#: again at most this often.
ASK_AGAIN_SECONDS = 1.0
#: How long one check of every backend answers ``/health`` (see
#: :meth:`Catalog.check_health`).
HEALTH_MAX_AGE = 1.0


class _Asking:
    """A Describe in flight, and its outcome once it is known."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.info: ModelInfo | None = None
        self.error: PredictionError | None = None


class Catalog:
    """Models by name (deployments too), and their backends' answers."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        nursery: trio.Nursery,
        backends: Mapping[str, Backend] | None = None,
    ) -> None:
        self._settings = settings
        #: Where background refreshes run.
        self._nursery = nursery
        #: Each model with its backend: *backends*' (by model name), else *backend*.
        self.models = {
            name: ModelEntry(m, (backends or {}).get(name, backend))
            for name, m in settings.models.items()
        }
        #: When each model's answer was last had (Trio's clock).
        self._fresh_until: dict[str, float] = {}
        #: Each model's ModelEntry.changes() when its answer was asked for,
        #: and when to ask again, changed since, if it could not answer.
        self._changes: dict[str, int] = {}
        self._ask_again_at: dict[str, float] = {}
        self._asking: dict[str, _Asking] = {}
        #: The last check of every target (see check_health): when it ended,
        #: and the one in flight, which callers meanwhile share.
        self._health_checked_at = -math.inf
        self._health_check: trio.Event | None = None

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            served = listed_names(sorted(self.models)) or "none"
            raise NotFound(f"model {name} is not served here (served: {served})") from None

    def deployment(self, name: str) -> ModelEntry:
        """The model a configured deployment serves."""
        try:
            return self.models[self._settings.deployments[name].model]
        except KeyError:
            raise NotFound(f"deployment {name} is not configured here") from None

    async def describe(self, entry: ModelEntry) -> ModelInfo:
        """Ask the model's backend what it is, and keep the answer; a caller
        that comes while a Describe of this model is in flight waits for
        that one's answer. Raises :class:`PredictionError` if the backend
        cannot say."""
        asking = self._asking.get(entry.name)
        if asking is None:
            asking = self._asking[entry.name] = _Asking()
            try:
                asking.info = await self._ask(entry)
            except PredictionError as exc:
                asking.error = exc
                raise
            finally:
                del self._asking[entry.name]
                asking.done.set()
            return asking.info
        await asking.done.wait()
        if asking.info is None:
            # Its error (a copy: one exception object raised in several
            # tasks would gather all their tracebacks), or, its asker
            # cancelled, that it could not say.
            if asking.error is not None:
                raise copy.copy(asking.error) from asking.error
            raise BackendUnavailable("model backend unavailable: Describe ended")
        return asking.info

    async def _ask(self, entry: ModelEntry) -> ModelInfo:
        changes = entry.changes()  # before: a loss during the call asks again
        info = await entry.backend.describe(entry.describe_target(), entry.metadata)
        check_patterns(info.input_schema, "input")
        check_patterns(info.output_schema, "output")
        if info.name and info.name != entry.name:
            log.warning("backend of %s says it serves %s", entry.name, info.name)
        if entry.info is not None and entry.info.version != info.version:
            log.info("backend of %s now serves version %s", entry.name, info.version)
        entry.info = info
        self._fresh_until[entry.name] = trio.current_time() + self._settings.describe_ttl_seconds
        self._changes[entry.name] = changes
        self._ask_again_at.pop(entry.name, None)
        return info

    async def info(self, entry: ModelEntry) -> ModelInfo | None:
        """The model's answer: the kept one (asked again in the background
        once it is older than ``describe_ttl_seconds``), or, if there is
        none yet or its backend lost its connection or changed health since,
        one asked within ``describe_timeout_seconds``; the kept one (None if
        none) if the backend is away (unreachable or slow). A backend that answers
        wrongly (a schema that is not JSON, no bridge.v1, a Describe that
        raised) raises its :class:`PredictionError` (502)."""
        now = trio.current_time()
        if entry.info is not None:
            changed = entry.changes() != self._changes.get(entry.name)
            waiting = now < self._ask_again_at.get(entry.name, -math.inf)
            if not changed or (waiting and entry.name not in self._asking):
                if now >= self._fresh_until.get(entry.name, -math.inf):
                    self._refresh_soon(entry)
                return entry.info
            # Its backend lost its connection (restarted, say) or changed
            # health since: asked now, before anything is validated against
            # it; while it cannot answer, at most every ASK_AGAIN_SECONDS.
            self._ask_again_at[entry.name] = now + ASK_AGAIN_SECONDS
        with trio.move_on_after(self._settings.describe_timeout_seconds):
            try:
                return await self.describe(entry)
            except (BackendUnavailable, BackendTimeout) as exc:
                log.info("cannot describe %s now: %s", entry.name, exc)
        return entry.info

    def _refresh_soon(self, entry: ModelEntry) -> None:
        if entry.name in self._asking:
            return  # one is in flight
        # Not again before it could have answered (a backend away is asked
        # at most once per describe_timeout_seconds, not once per request).
        self._fresh_until[entry.name] = (
            trio.current_time() + self._settings.describe_timeout_seconds
        )
        self._nursery.start_soon(self._refresh, entry)

    async def _refresh(self, entry: ModelEntry) -> None:
        with trio.move_on_after(self._settings.describe_timeout_seconds):
            try:
                await self.describe(entry)
            except PredictionError as exc:
                log.warning("cannot describe %s again; the last answer stays: %s", entry.name, exc)
            except Exception:  # a task in the bridge's nursery: a bug here is logged, not spread
                log.exception("describing %s again failed; the last answer stays", entry.name)

    async def known_info(self, entry: ModelEntry) -> ModelInfo | None:
        """:meth:`info`, with a backend that answers wrongly logged and
        taken as away: for listings, which one bad backend must not break."""
        try:
            return await self.info(entry)
        except PredictionError as exc:
            log.warning("cannot describe %s: %s", entry.name, exc)
            return None

    async def know_all(self) -> None:
        """:meth:`known_info` of every model, all at once: a listing takes as
        long as the slowest backend, not as long as all of them together."""
        async with trio.open_nursery() as nursery:
            for entry in self.models.values():
                nursery.start_soon(self.known_info, entry)

    async def check_targets(
        self, entries: list[ModelEntry] | None = None, within: float = HEALTH_CHECK_SECONDS
    ) -> None:
        """Ask every target of *entries* (None: every model) for its
        ``grpc.health.v1`` status, all at once, and mark what each said
        (UNAVAILABLE: no answer within *within* seconds)."""

        async def check(entry: ModelEntry, target: str) -> None:
            status = "UNAVAILABLE"
            with trio.move_on_after(within):
                status = await entry.backend.check_health(target, entry.metadata)
            entry.mark(target, status)
            if status != "NOT_SERVING":
                entry.setup_errors.pop(target, None)
                return
            # Loading, or its setup failed: its Describe says which.
            with trio.move_on_after(within), contextlib.suppress(PredictionError):
                info = await entry.backend.describe(target, entry.metadata)
                entry.setup_errors[target] = info.setup_error

        async with trio.open_nursery() as nursery:
            for entry in self.models.values() if entries is None else entries:
                for target in entry.settings.targets:
                    nursery.start_soon(check, entry, target)

    async def check_health(self) -> None:
        """:meth:`check_targets` of every model, unless the last check
        ended less than :data:`HEALTH_MAX_AGE` seconds ago; callers that
        come while one runs share it. However often ``/health`` is asked,
        each backend is asked at most about once a second (plus the
        check's own time)."""
        if trio.current_time() - self._health_checked_at < HEALTH_MAX_AGE:
            return
        if self._health_check is not None:
            await self._health_check.wait()
            return
        self._health_check = checked = trio.Event()
        try:
            # Done even if its caller goes (a client that hangs up at once
            # must not make every /health a new check): it takes at most
            # HEALTH_CHECK_SECONDS.
            with trio.CancelScope(shield=True):
                await self.check_targets()
            self._health_checked_at = trio.current_time()
        finally:
            self._health_check = None
            checked.set()

    async def watch_targets(self) -> None:
        """Check the targets of each model with several, every
        ``health_check_seconds``, until cancelled (an active health check,
        as Envoy's: one that is down gets no new predictions until it is
        SERVING again)."""
        async with trio.open_nursery() as nursery:
            for entry in self.models.values():
                if len(entry.settings.targets) > 1:
                    nursery.start_soon(self._watch, entry)

    async def _watch(self, entry: ModelEntry) -> None:
        while True:
            await self.check_targets([entry])
            await trio.sleep(entry.settings.health_check_seconds)

    async def resolve_version(self, ref: str) -> tuple[ModelEntry, str | None]:
        """The model and version id for a ``version`` field: a version id,
        ``owner/name:id`` or ``owner/name``."""
        name, colon, version = ref.partition(":")
        if "/" in name:
            entry = self.model(name)
            if colon:
                info = await self.info(entry)
                if info is not None and info.version != version:
                    raise NotFound(f"version {version} of {entry.name} is not served here")
            return entry, version or None
        await self.know_all()
        for entry in self.models.values():
            if entry.info is not None and entry.info.version == ref:
                return entry, ref
        raise NotFound(f"version {ref} is not served here")
