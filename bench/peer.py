"""The hand-written peer: the obvious 40-line bridge a user would write.

FastAPI + sse-starlette + grpc.aio on uvicorn (with uvloop and httptools,
as ``uvicorn[standard]`` installs them): one SSE event per output chunk, so
it writes the stream the bridge writes (before the SDK batched tokens, one
chunk per gRPC message, so one event per message).
Only what the bench needs: ``POST /v1/models/{owner}/{name}/predictions``
answers with the stream, as the bridge does for ``Accept: text/event-stream``.

    python bench/peer.py --port 0 demo/echo=127.0.0.1:50051 ...
"""

from __future__ import annotations

import argparse
import contextlib
import socket

import grpc
import uvicorn
from fastapi import FastAPI, Request
from sse_starlette.sse import EventSourceResponse

from bridge._proto.v1 import predictor_pb2, predictor_pb2_grpc
from bridge.cli.lifeline import stop_on_eof

stubs: dict[str, predictor_pb2_grpc.PredictorStub] = {}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):  # noqa: ANN201, RUF100
    channels = {name: grpc.aio.insecure_channel(target) for name, target in TARGETS.items()}
    stubs.update({name: predictor_pb2_grpc.PredictorStub(c) for name, c in channels.items()})
    yield
    for channel in channels.values():
        await channel.close()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/models/{owner}/{name}/predictions")
async def predict(owner: str, name: str, request: Request) -> EventSourceResponse:
    request_pb = predictor_pb2.PredictRequest(id="peer")
    request_pb.input.update((await request.json()).get("input", {}))
    call = stubs[f"{owner}/{name}"].Predict(request_pb)

    async def events():  # noqa: ANN202, RUF100
        try:
            n = 0
            async for message in call:
                for chunk in message.output.chunks:
                    yield {"event": "output", "id": str(n), "data": chunk.text}
                    n += 1
            yield {"event": "done", "id": str(n), "data": "{}"}
        finally:
            call.cancel()

    return EventSourceResponse(events())


TARGETS: dict[str, str] = {}

if __name__ == "__main__":
    stop_on_eof()  # bench/run.py holds our stdin: we end with it
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("targets", nargs="+", help="owner/name=host:port")
    args = parser.parse_args()
    TARGETS.update(t.split("=", 1) for t in args.targets)
    sock = socket.socket()
    sock.bind(("127.0.0.1", args.port))
    print(f"peer listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", backlog=2048, timeout_keep_alive=60)
    uvicorn.Server(config).run(sockets=[sock])
