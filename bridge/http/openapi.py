"""The OpenAPI 3.1 description of the bridge's HTTP API, served at
``/openapi.json``: every endpoint, body and error."""

from __future__ import annotations

from typing import Any

from .schemas import components

__all__ = ["PATHS", "spec"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_PROBLEMS = {
    400: "Malformed JSON, or a body, header or parameter of the wrong shape (such as a "
    "Cancel-After that is not a duration from 1 s to 24 h); JSON nested deeper than 32 "
    "levels, with NaN or Infinity, or with a lone surrogate.",
    401: "A token is required (auth is on) and none valid was sent.",
    404: "No such model, version, deployment or prediction (or not visible to this "
    "token), or a prediction past the metadata retention window.",
    410: "The prediction's data was removed (data_removed); its metadata remains.",
    413: "The request body is over max_body_bytes.",
    422: "The input does not match the model's input schema, the webhook is not an "
    "absolute http(s) URL to a public address, or stream is true for a model whose "
    "output is one value (or not a boolean).",
    502: "The model's backend answered Describe with something that is not a schema "
    "(not JSON, not an object, not a JSON Schema).",
    429: "Over capacity: too many predictions running and waiting, or their data "
    "fills max_retained_bytes.",
    503: "Shutting down (draining), or the model's backend cannot say what it is.",
}


def _problems(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        response: dict[str, Any] = {
            "description": _PROBLEMS[code],
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        if code in (429, 503):
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "string"},
                }
            }
        if code == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        out[str(code)] = response
    return out


def _param(
    name: str, where: str, description: str | None = None, example: str | None = None, **schema: Any
) -> dict[str, Any]:
    """A parameter: in the path (required), a query or a header (optional);
    *schema*: its string schema's other keys."""
    param: dict[str, Any] = {"name": name, "in": where, "required": where == "path"}
    if description is not None:
        param["description"] = description
    param["schema"] = {"type": "string", **schema}
    if example is not None:
        param["example"] = example
    return param


def _create(body: str, summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [
                *params,
                _param(
                    "Prefer",
                    "header",
                    "`wait` or `wait=N` (RFC 7240; other preferences beside it are ignored): "
                    "answer when the prediction ends or after N seconds, at least 1 and at most "
                    "max_wait_seconds (60 by default; `wait` alone is the most); unfinished, it "
                    "reads as `starting`. A header without `wait` asks for no wait.",
                    example="wait=5",
                ),
                _param(
                    "Cancel-After",
                    "header",
                    "Cancel the prediction this long after it is created, queued or running: "
                    "seconds (`90`, `1.5`) or hours, minutes and seconds (`30s`, `5m`, `1h30m`), "
                    "from 1 s to 24 h; anything else is a 400. The prediction ends `canceled` "
                    "(never Replicate's `aborted`).",
                    example="5m",
                ),
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(body), "example": _EXAMPLES[body]}},
            },
            "responses": {
                "201": {
                    "description": "Created. With `Accept: text/event-stream`, the answer is "
                    "the prediction's event stream, which then owns it.",
                    "headers": {
                        "Preference-Applied": {"schema": {"type": "string"}},
                        "Location": {"schema": {"type": "string"}},
                    },
                    "content": {
                        "application/json": {"schema": _ref("Prediction")},
                        "text/event-stream": {"schema": _ref("SSEEvent")},
                    },
                },
                **_problems(400, 401, 404, 413, 422, 429, 502, 503),
            },
        }
    }


_OPENAI_ERRORS = {
    400: "Bad JSON, a field of the wrong shape (param names it), or input the model's "
    "schema rejects.",
    401: "A token is required (auth is on) and none valid was sent.",
    404: "No such model or deployment (code model_not_found), or response.",
    413: "The request body is over max_body_bytes.",
    429: "Over capacity; retry after Retry-After seconds.",
    500: "A non-streaming chat completion or completion whose prediction failed or was "
    "canceled (x-should-retry: false); a response says so in its status instead.",
    503: "Shutting down, or the model's backend cannot say what it is.",
}


def _openai(body: str, answer: str, example: dict[str, Any], summary: str) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    for code, description in _OPENAI_ERRORS.items():
        errors[str(code)] = _json(_ref("OpenAIError"), description)
        if code in (429, 503):
            errors[str(code)]["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(body), "example": example}},
            },
            "responses": {
                "200": {
                    "description": "With stream true, the stream (it owns the prediction: "
                    "hanging up cancels it); else the answer once the prediction ends.",
                    "content": {
                        "application/json": {"schema": _ref(answer)},
                        "text/event-stream": {"schema": _ref("OpenAIStreamLine")},
                    },
                },
                **errors,
            },
        }
    }


_HELLO = [{"role": "user", "content": "Hello there"}]
_EXAMPLES = {
    "PredictionRequest": {"version": "demo/echo", "input": {"prompt": "Hello there"}},
    "ModelPredictionRequest": {"input": {"prompt": "Tell me a story"}},
}
_ID = _param("prediction_id", "path")
_OWNER = _param("owner", "path", example="demo")
_NAME = _param("name", "path", example="echo")


_SSE = {"text/event-stream": {"schema": _ref("SSEEvent")}}

#: Every endpoint: one literal, read as the document it is (checked against
#: the app's routes by tests/test_openapi.py).
PATHS: dict[str, Any] = {
    "/v1/predictions": {
        **_create("PredictionRequest", "Create a prediction", []),
        "get": {
            "summary": "List predictions, newest first",
            "parameters": [_param("cursor", "query")],
            "responses": {
                "200": _json(_ref("PredictionPage"), "A page."),
                **_problems(400, 401),
            },
        },
    },
    "/v1/models/{owner}/{name}/predictions": _create(
        "ModelPredictionRequest", "Create a prediction of a model", [_OWNER, _NAME]
    ),
    "/v1/deployments/{owner}/{name}/predictions": _create(
        "ModelPredictionRequest",
        "Create a prediction of the model a deployment serves",
        [_OWNER, _NAME],
    ),
    "/v1/deployments": {
        "get": {
            "summary": "The configured deployments",
            "responses": {
                "200": _json(_ref("DeploymentPage"), "Those whose backend answers."),
                **_problems(401),
            },
        }
    },
    "/v1/deployments/{owner}/{name}": {
        "get": {
            "summary": "A deployment: a second name for a configured model",
            "parameters": [_OWNER, _NAME],
            "responses": {
                "200": _json(_ref("Deployment"), "The deployment."),
                **_problems(401, 404, 502, 503),
            },
        }
    },
    "/v1/predictions/{prediction_id}": {
        "get": {
            "summary": "Get a prediction as it is now",
            "parameters": [_ID],
            "responses": {
                "200": _json(_ref("Prediction"), "The prediction."),
                **_problems(401, 404),
            },
        }
    },
    "/v1/predictions/{prediction_id}/cancel": {
        "post": {
            "summary": "Cancel a prediction (idempotent; no body needed)",
            "parameters": [_ID],
            "responses": {
                "200": _json(_ref("Prediction"), "The prediction, ended."),
                **_problems(401, 404),
            },
        }
    },
    "/v1/predictions/{prediction_id}/stream": {
        "get": {
            "summary": "The prediction's server-sent events (no token needed)",
            "parameters": [
                _ID,
                _param(
                    "Last-Event-ID",
                    "header",
                    "Resume after this event id (`<seconds>:<n>`).",
                    pattern="^[0-9]+:[0-9]+$",
                ),
            ],
            "responses": {
                "200": {"description": "output, logs, error and done events.", "content": _SSE},
                "204": {
                    "description": "Last-Event-ID is at or past the end of a finished "
                    "prediction: nothing more will come (EventSource stops reconnecting)."
                },
                **_problems(400, 404, 410),
            },
        }
    },
    "/v1/models": {
        "get": {
            "summary": "The models this bridge serves",
            "responses": {"200": _json(_ref("ModelPage"), "All of them."), **_problems(401)},
        }
    },
    "/v1/models/{owner}/{name}": {
        "get": {
            "summary": "A model",
            "parameters": [_OWNER, _NAME],
            "responses": {
                "200": _json(_ref("Model"), "The model."),
                **_problems(401, 404, 502),
            },
        }
    },
    "/v1/models/{owner}/{name}/versions/{version_id}": {
        "get": {
            "summary": "A model version",
            "parameters": [
                _OWNER,
                _NAME,
                _param("version_id", "path"),
            ],
            "responses": {
                "200": _json(_ref("Version"), "The version."),
                **_problems(401, 404, 502, 503),
            },
        }
    },
    "/v1/chat/completions": _openai(
        "ChatCompletionRequest",
        "ChatCompletion",
        {"model": "demo/echo", "messages": _HELLO},
        "OpenAI's chat completion, as a prediction (chatcmpl-<id>)",
    ),
    "/v1/completions": _openai(
        "CompletionRequest",
        "TextCompletion",
        {"model": "demo/echo", "prompt": "Hello there"},
        "OpenAI's (legacy) completion, as a prediction (cmpl-<id>)",
    ),
    "/v1/responses": _openai(
        "ResponseRequest",
        "OpenAIResponse",
        {"model": "demo/echo", "input": "Hello there"},
        "OpenAI's response, as a prediction (resp_<id>); streamed as named events",
    ),
    "/v1/responses/{response_id}": {
        "get": {
            "summary": "A response as it is now",
            "parameters": [_param("response_id", "path")],
            "responses": {
                "200": _json(_ref("OpenAIResponse"), "The response."),
                "401": _json(_ref("OpenAIError"), _OPENAI_ERRORS[401]),
                "404": _json(_ref("OpenAIError"), _OPENAI_ERRORS[404]),
            },
        }
    },
    "/v1/webhooks/default/secret": {
        "get": {
            "summary": "The key webhooks are signed with",
            "responses": {
                "200": _json(_ref("WebhookSecret"), "The key."),
                **_problems(401, 404),
            },
        }
    },
    "/health": {
        "get": {
            "summary": "Liveness and readiness, with each backend's health",
            "responses": {
                "200": _json(_ref("Health"), "Serving."),
                "503": _json(_ref("Health"), "Draining for shutdown."),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "description": "Needs `[metrics] token`, else one of the `[auth] tokens`, "
            "when either is set.",
            "responses": {
                "200": {
                    "description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_problems(401),
            },
        }
    },
}


def spec() -> dict[str, Any]:
    """The whole OpenAPI document: its schemas generated from the body types
    (:mod:`bridge.http.schemas`), its paths :data:`PATHS`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "grpc-sse-bridge",
            "version": "1",
            "description": "Replicate's predictions API, and OpenAI's chat completions, "
            "completions and responses, in front of gRPC model backends, with live "
            "server-sent event streams.",
        },
        "paths": PATHS,
        "components": {
            "schemas": components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
