"""A connection to an OpenAI-compatible server (vLLM, llama.cpp's llama-server, TGI, Ollama, ...).

Every request goes through the official `openai` client: its retries with exponential backoff
(which honour `Retry-After`) ride out brief overloads (429, 503) and dropped connections; what
still fails becomes one message for the student here, with the details in the server log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import openai

from tutor.defaults import DEFAULT_TIMEOUT_S
from tutor.errors import BusyError, TutorError, first_line

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # a server that does not accept a connection by then is unreachable
MAX_RETRIES = 3  # the openai client's backoff: ~0.5 s, 1 s, 2 s (with jitter) between tries
NO_KEY = "not-needed"  # the client insists on a key; servers started without one ignore it


class ServerUnavailable(RuntimeError):
    """The server could not be used at start-up (unreachable, wrong key, unknown model)."""


@dataclass(frozen=True)
class ServerOptions:
    """Where an OpenAI-compatible server is and how to talk to it."""

    url: str  # the API's base URL, e.g. http://localhost:8080/v1 (a missing /v1 is added)
    api_key: str | None = None
    model: str | None = None  # None: the first model the server lists
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = MAX_RETRIES

    @property
    def base_url(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    @property
    def root_url(self) -> str:
        """The server's root, where llama.cpp and vLLM serve /tokenize, /props, /health."""
        return self.base_url[: -len("/v1")]


def client_for(options: ServerOptions) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=options.base_url,
        api_key=options.api_key or NO_KEY,
        timeout=openai.Timeout(options.timeout_s, connect=CONNECT_TIMEOUT_S),
        max_retries=options.max_retries,
    )


def check_server(client: openai.OpenAI, options: ServerOptions, what: str) -> str | None:
    """Reach the server once; return the model to ask for (None if the server lists none).

    Raises ServerUnavailable with one line when it cannot be reached, refuses the key, or does
    not serve the model asked for.
    """
    where = f"the {what} server at {options.base_url}"
    try:
        models = [m.id for m in client.with_options(max_retries=0).models.list()]
    except openai.NotFoundError:  # a server without a model list: the model must be named
        return options.model
    except openai.AuthenticationError:
        raise ServerUnavailable(
            f"{where} refused the API key (401): check the key you gave for it"
        ) from None
    except openai.APIConnectionError as e:
        raise ServerUnavailable(f"cannot reach {where}: {first_line(e.__cause__ or e)}") from None
    except openai.APIError as e:
        raise ServerUnavailable(f"{where} answered with an error: {first_line(e)}") from None
    if options.model is None:
        return models[0] if models else None
    if models and options.model not in models:
        raise ServerUnavailable(
            f"{where} does not serve {options.model!r}; it serves: " + ", ".join(models)
        )
    return options.model


def explain(e: Exception, what: str) -> TutorError:
    """The student's message for a failed request to the WHAT server (details go to the log).

    Anything but the client's own errors (a connection reset while a stream is read) counts as
    the server being unreachable.
    """
    if isinstance(e, openai.RateLimitError) or (
        isinstance(e, openai.APIStatusError) and e.status_code == 503
    ):
        log.warning(
            "the %s server is at capacity (HTTP %s) after %d retries",
            what,
            e.status_code,
            MAX_RETRIES,
        )
        return BusyError()
    if isinstance(e, openai.APITimeoutError):
        log.warning("the %s server did not answer in time", what)
        return TutorError(
            f"The tutor's {what} server is taking too long to answer. Please try again in a moment."
        )
    if isinstance(e, openai.APIConnectionError) or not isinstance(e, openai.OpenAIError):
        log.warning("the %s server cannot be reached: %s", what, first_line(e.__cause__ or e))
        return TutorError(
            f"The tutor's {what} server cannot be reached right now. Please try again in a moment."
        )
    if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
        log.error("the %s server refused our API key: %s", what, first_line(e))
        return TutorError(
            f"The tutor's {what} server refused its credentials. Please tell "
            "whoever runs this tutor."
        )
    log.error("the %s server failed: %s", what, first_line(e))
    status = f" (HTTP {e.status_code})" if isinstance(e, openai.APIStatusError) else ""
    return TutorError(f"The tutor's {what} server could not answer{status}. Please try again.")
