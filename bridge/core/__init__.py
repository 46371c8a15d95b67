"""The core: predictions and what keeps, runs and finds them, with no HTTP
and no gRPC in it.

The records and their lifecycle table (``predictions``), the event log
interface and the log kept in memory (``events``), the store interface
and the store kept in memory (``store``, with ``retention`` applied
inside), the supervisor that owns every prediction's task
(``supervisor``), admission to running slots (``admission``), a
prediction's run loop (``runner``), the models and their Describe answers
(``catalog``, ``models``), and the ``Bridge`` that puts them together
(``service``). It reaches model backends only through
:class:`bridge.backends.interface.Backend`.
"""
