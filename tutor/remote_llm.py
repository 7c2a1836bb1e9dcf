"""The language model on an OpenAI-compatible server: the embedded engine's interface, over HTTP.

`RemoteLLM` streams answers from `/v1/chat/completions` through the official `openai` client.
Context fitting needs prompt lengths in the server's tokens; they come from the server's own
endpoints where it has them (llama.cpp's `/apply-template` + `/tokenize`, vLLM's `/tokenize`,
llama-cpp-python's `/extras/tokenize/count`), else from a local tokenizer (`tokenizer.json`
through `tokenizers`, or a Hub id).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import openai
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from tutor.batching import GenerationStats, InLine
from tutor.chat_format import LLAMA3_CHAT_TEMPLATE
from tutor.conversation import Message
from tutor.errors import BusyError, TutorError, first_line
from tutor.llm import Activity
from tutor.modes import Generation
from tutor.remote import ServerOptions, ServerUnavailable, check_server, client_for, explain

log = logging.getLogger(__name__)

WHAT = "language model"
CUT_NOTE = (
    "\n\n⚠️ *The answer was cut off here: the connection to the tutor's language model "
    "server was lost. Please ask again.*"
)
COUNT_CACHE_ENTRIES = 256  # prompt lengths remembered (a follow-up counts the same list twice)
FINISH_REASONS = {"stop": "eot", "length": "max_tokens"}  # OpenAI's names → the engine's
PROBE_TEXT = "Hello"
PROBE = [{"role": "user", "content": PROBE_TEXT}]


class StreamEnded(ConnectionError):
    """The server ended the stream without a finish reason (llama-cpp-python's server does so
    to an answer when another request interrupts it)."""


class TokenCounter:
    """Prompt length in tokens of a message list, template applied; SOURCE says whose tokens."""

    def __init__(self, count: Callable[[str], int], source: str) -> None:
        self._count = lru_cache(maxsize=COUNT_CACHE_ENTRIES)(count)
        self.source = source

    def __call__(self, messages: list[Message]) -> int:
        try:
            return self._count(json.dumps(messages))
        except openai.OpenAIError as e:  # the server went away after start-up
            raise explain(e, WHAT) from None


def llama_server_counter(client: openai.OpenAI, root: str) -> TokenCounter | None:
    """llama.cpp's server: its chat template (`/apply-template`), then its tokenizer."""

    def count(messages_json: str) -> int:
        prompt = client.post(
            f"{root}/apply-template", cast_to=object, body={"messages": json.loads(messages_json)}
        )["prompt"]
        return len(
            client.post(
                f"{root}/tokenize",
                cast_to=object,
                body={"content": prompt, "add_special": True, "parse_special": True},
            )["tokens"]
        )

    return _probed(count, "the server's /apply-template and /tokenize (llama.cpp)")


def vllm_counter(client: openai.OpenAI, root: str, model: str) -> TokenCounter | None:
    """vLLM: `/tokenize` takes the messages and applies the model's chat template itself."""

    def count(messages_json: str) -> int:
        return client.post(
            f"{root}/tokenize",
            cast_to=object,
            body={
                "model": model,
                "messages": json.loads(messages_json),
                "add_generation_prompt": True,
            },
        )["count"]

    return _probed(count, "the server's /tokenize (vLLM)")


def llama_cpp_python_counter(client: openai.OpenAI, root: str, model: str) -> TokenCounter | None:
    """llama-cpp-python's server (`python -m llama_cpp.server`): `/extras/tokenize/count` counts
    a text's tokens but applies no chat template. The template's own tokens are measured once,
    from the prompt sizes (`usage.prompt_tokens`) of four one-token completions: a fixed part
    (with the generation prompt) and one part per message of each role, so that a list's count
    is fixed + Σ (role part + content tokens)."""

    def text_tokens(text: str) -> int:
        return client.post(
            f"{root}/extras/tokenize/count", cast_to=object, body={"input": text, "model": model}
        )["count"]

    def prompt_tokens(*roles: str) -> int:
        done = client.chat.completions.create(
            model=model,
            messages=[{"role": role, "content": PROBE_TEXT} for role in roles],
            max_tokens=1,
            temperature=0.0,
        )
        return done.usage.prompt_tokens

    try:
        bos = text_tokens("")  # the BOS a text is counted with, if the model adds one
        probe = text_tokens(PROBE_TEXT) - bos
        user = prompt_tokens("user")
        per_user = prompt_tokens("user", "user") - user - probe
        fixed = user - per_user - probe
        per_role = {
            "user": per_user,
            "assistant": prompt_tokens("user", "assistant", "user")
            - fixed
            - 2 * per_user
            - 3 * probe,
            "system": prompt_tokens("system", "user") - fixed - per_user - 2 * probe,
        }
    except (openai.APIStatusError, openai.APIConnectionError, KeyError, TypeError, AttributeError):
        return None
    content_tokens = lru_cache(maxsize=COUNT_CACHE_ENTRIES)(lambda text: text_tokens(text) - bos)

    def count(messages_json: str) -> int:
        messages = json.loads(messages_json)
        return fixed + sum(per_role[m["role"]] + content_tokens(m["content"]) for m in messages)

    return _probed(
        count,
        "the server's /extras/tokenize/count and its template's measured size (llama-cpp-python)",
    )


def _probed(count: Callable[[str], int], source: str) -> TokenCounter | None:
    """COUNT as a TokenCounter if the server answers it sensibly, else None."""
    try:
        n = count(json.dumps(PROBE))
    except (openai.APIStatusError, KeyError, TypeError):  # no such endpoint, another shape
        return None
    return TokenCounter(count, source) if isinstance(n, int) and n > 0 else None


def local_counter(spec: str) -> TokenCounter:
    """A tokenizer.json (or a folder with one, or a Hub id) and the chat template beside it
    (tokenizer_config.json's `chat_template`; Llama 3's if there is none)."""
    from tokenizers import Tokenizer

    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            path = path / "tokenizer.json"
        if path.is_file():
            tokenizer, config_path = (
                Tokenizer.from_file(str(path)),
                path.with_name("tokenizer_config.json"),
            )
        else:
            from huggingface_hub import hf_hub_download

            tokenizer = Tokenizer.from_pretrained(spec)
            try:
                config_path = Path(hf_hub_download(spec, "tokenizer_config.json"))
            except Exception:  # no config: Llama 3's template
                config_path = None
    except Exception as e:  # a missing file, an offline Hub, a broken JSON
        raise ServerUnavailable(f"cannot load the tokenizer {spec!r}: {first_line(e)}") from None
    config = json.loads(config_path.read_text()) if config_path and config_path.is_file() else {}

    def special(name: str) -> str:
        token = config.get(name) or ""
        return token.get("content", "") if isinstance(token, dict) else token

    template = config.get("chat_template")
    formatter = Jinja2ChatFormatter(
        template=template if isinstance(template, str) else LLAMA3_CHAT_TEMPLATE,
        eos_token=special("eos_token"),
        bos_token=special("bos_token"),
        add_generation_prompt=True,
    )

    def count(messages_json: str) -> int:
        prompt = formatter(messages=json.loads(messages_json)).prompt
        return len(tokenizer.encode(prompt, add_special_tokens=False).ids)

    return TokenCounter(count, f"the local tokenizer {spec}")


def server_window(client: openai.OpenAI, options: ServerOptions) -> int | None:
    """One conversation's window on the server, if it says: llama.cpp's /props (per slot),
    vLLM's `max_model_len` in /v1/models."""
    for url, window in (
        (f"{options.root_url}/props", lambda d: d["default_generation_settings"]["n_ctx"]),
        (
            f"{options.base_url}/models",
            lambda d: next(m["max_model_len"] for m in d["data"] if "max_model_len" in m),
        ),
    ):
        try:
            return int(window(client.with_options(max_retries=0).get(url, cast_to=object)))
        except (openai.APIStatusError, KeyError, TypeError, ValueError, StopIteration):
            continue
    return None


class RemoteLLM:
    """A chat model on an OpenAI-compatible server, used as the embedded `TutorLLM` is."""

    def __init__(
        self,
        options: ServerOptions,
        n_ctx: int = 4096,
        tokenizer: str | None = None,
        max_in_flight: int = 64,
    ) -> None:
        """Check the server once (ServerUnavailable if it cannot be used). N_CTX caps one
        conversation's window (the server's own is used if smaller); MAX_IN_FLIGHT answers may
        stream at once, more are refused as busy."""
        self.options = options
        self.client = client_for(options)
        self.model = check_server(self.client, options, WHAT) or "default"
        root = options.root_url
        # A tokenizer given is used as given; else the server's own endpoints, probed in turn.
        counter = (
            local_counter(tokenizer)
            if tokenizer
            else llama_server_counter(self.client, root)
            or vllm_counter(self.client, root, self.model)
            or llama_cpp_python_counter(self.client, root, self.model)
        )
        if counter is None:
            raise ServerUnavailable(
                f"the language model server at {options.base_url} has no tokenizer endpoint "
                "(llama.cpp's /tokenize, vLLM's or llama-cpp-python's /extras/tokenize): give "
                "--tokenizer (a tokenizer.json, or a Hugging Face Hub id) so that conversations "
                "can be fitted to the window"
            )
        self.count_tokens = counter
        window = server_window(self.client, options)
        self.n_ctx = min(n_ctx, window) if window else n_ctx
        log.info(
            "language model %r at %s; counting tokens with %s; window %d tokens (%s)",
            self.model,
            options.base_url,
            counter.source,
            self.n_ctx,
            f"the server's is {window}" if window else "the server does not say its own",
        )
        self._in_flight = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._answering = 0
        self._ended: collections.Counter[str] = collections.Counter()
        self.stats = GenerationStats()  # the last finished answer's

    def pin(self, messages: list[Message]) -> int:
        """Nothing to pin here: the server keeps its own prompt cache."""
        return 0

    def forget(self) -> None:
        """Nothing is cached on this side."""

    def prefill(
        self,
        messages: list[Message],
        cancel: threading.Event | None = None,
        answer: Generation | None = None,
        max_tokens: int | None = None,
    ) -> None:
        """Nothing to do ahead: an OpenAI-compatible server evaluates a prompt when asked."""

    def activity(self) -> Activity:
        with self._lock:
            return Activity(
                answering=self._answering,
                waiting=0,
                saved_conversations=0,
                saved_bytes=0,
                ended=dict(self._ended),
            )

    def stream(
        self,
        messages: list[Message],
        generation: Generation,
        max_tokens: int | None = None,
        cancel: threading.Event | None = None,
        seed: int | None = None,
        stats: GenerationStats | None = None,
        places: bool = False,
    ) -> Iterator[str | InLine]:
        """Yield the answer to MESSAGES piece by piece, as `TutorLLM.stream` does (the server
        keeps its own line, so no places are reported). Closing the iterator closes the HTTP
        stream, and the server stops generating. A stream cut mid-answer ends with CUT_NOTE.
        """
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = stats.evaluated_tokens = self.count_tokens(messages)  # cached
        return self._pieces(
            messages, generation, max_tokens or generation.max_tokens, cancel, seed, stats
        )

    def answer(self, messages: list[Message], generation: Generation, **kwargs) -> str:
        """The whole answer at once."""
        return "".join(self.stream(messages, generation, **kwargs))

    def _pieces(
        self,
        messages: list[Message],
        generation: Generation,
        max_tokens: int,
        cancel: threading.Event | None,
        seed: int | None,
        stats: GenerationStats,
    ) -> Iterator[str]:
        if not self._in_flight.acquire(blocking=False):
            raise BusyError()
        started = time.monotonic()
        stats.stopped = "error"
        with self._lock:
            self._answering += 1
        stream = None
        try:
            stream = self._open(messages, generation, max_tokens, seed)
            for chunk in stream:
                if cancel is not None and cancel.is_set():
                    stats.stopped = "cancelled"
                    break
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.delta and choice.delta.content:
                    if not stats.generated_tokens:
                        stats.time_to_first_token_s = time.monotonic() - started
                    stats.generated_tokens += 1  # a chunk is a token on llama.cpp and vLLM
                    yield choice.delta.content
                if choice.finish_reason:
                    stats.stopped = FINISH_REASONS.get(choice.finish_reason, choice.finish_reason)
            if stats.stopped == "error":  # the stream ended without saying why: it was cut
                raise StreamEnded("the stream ended without a finish reason")
        except GeneratorExit:  # the student pressed Stop or left: close the stream below
            stats.stopped = "cancelled"
            raise
        except TutorError:
            raise
        except Exception as e:  # the server or the network failed
            if not stats.generated_tokens:
                if isinstance(e, StreamEnded):
                    log.warning("the server ended an answer before its first token")
                    raise TutorError(
                        f"The tutor's {WHAT} server broke off the answer before it "
                        "began. Please try again."
                    ) from None
                raise explain(e, WHAT) from None
            log.warning(
                "the answer stream was cut after %d pieces: %s",
                stats.generated_tokens,
                first_line(e),
            )
            stats.stopped = "cut"
            yield CUT_NOTE
        finally:
            if stream is not None:
                stream.close()  # the server sees the connection closed and stops generating
            stats.total_s = time.monotonic() - started
            with self._lock:
                self._answering -= 1
                self._ended[stats.stopped] += 1
            self._in_flight.release()
            self.stats = stats

    def _open(
        self, messages: list[Message], generation: Generation, max_tokens: int, seed: int | None
    ) -> openai.Stream:
        """Start the streamed completion; the client retries overloads and dropped connections."""
        seed = seed if seed is not None else generation.seed
        # Beyond OpenAI's fields; always sent, as servers' defaults differ (llama-cpp-python's
        # repeat penalty is 1.1). The penalty under llama.cpp's name, then vLLM's.
        extra = {
            "top_k": generation.top_k,
            "min_p": generation.min_p,
            "repeat_penalty": generation.repeat_penalty,
            "repetition_penalty": generation.repeat_penalty,
        }
        try:
            return self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                stream=True,
                max_tokens=max_tokens,
                temperature=generation.temperature,
                top_p=generation.top_p,
                **({"seed": seed} if seed is not None else {}),
                extra_body=extra,
            )
        except openai.OpenAIError as e:
            raise explain(e, WHAT) from None
