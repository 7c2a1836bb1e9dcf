"""Speech → text with openai-whisper, on CPU, from a float32 16 kHz mono array (no ffmpeg).

On CPU, Whisper's time goes into matrix products with fp32 weights, and per decoded token mostly
into the vocabulary projection (a product with the token embedding, not a Linear layer). `int8`
precision (the default) stores every linear layer's weights, that projection included, as int8
and quantizes activations on the fly (PyTorch dynamic quantization), which keeps openai-whisper's
decoding exactly as it is.

The encoder's window is 30 s whatever the audio's length (`full`, how Whisper was trained). The
`fit` window encodes only the audio and FIT_MARGIN_S of silence after it, in steps of
FIT_STEP_S: the encoder's cost follows the audio's length (a 5 s question: a 10 s window),
as whisper.cpp's `audio_ctx` does. With real weights (Whisper tiny.en, bench.streaming_wer) it
is as accurate as the full window on the shared clips, once a window whose text loops on a
phrase (short speech, now and then) is decoded again in the full window; users of whisper.cpp
report the same loops (ggml-org/whisper.cpp#1855, #137). The app's default is `fit`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
import math
import warnings
from collections import OrderedDict
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import whisper
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from whisper.audio import N_FRAMES, N_SAMPLES
from whisper.model import AudioEncoder, TextDecoder, Whisper

from tutor.audio import SAMPLE_RATE, AudioError
from tutor.draft_decoding import DECODING_FIELDS, decode_with_draft
from tutor.errors import TranscriberLoadError, first_line
from tutor.threads import DedicatedThread
from tutor.vad import SpeechDetector

log = logging.getLogger(__name__)
WINDOWS = ("full", "fit")  # the encoder's window: 30 s always, or fitted to the audio
FIT_MARGIN_S = 2.56  # silence kept after the audio in a fitted window (128 encoder positions)
FIT_STEP_S = 5.0  # fitted windows are 5, 10, 15, 20 or 25 s long: few shapes to build
POSITIONS_PER_S = 50  # encoder positions per second of audio (1500 in 30 s; 2 mel frames each)
# transcribe()'s defaults: a window whose text is this unlikely and whose <|nospeech|> is this
# likely is silence (its text is dropped).
LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD = -1.0, 0.6
# ... and a window whose text compresses better than this failed (transcribe() would decode it
# again, warmer): in a fitted window, short speech sometimes loops on a phrase ("In 1813, in
# 1813, in 1813, …" for "In eighteen thirteen"), which the 30 s window does not.
COMPRESSION_RATIO_THRESHOLD = 2.4
# The transcriber's options for whisper's transcribe() (besides the language): one greedy pass,
# text only, each recording on its own.
TRANSCRIBE_OPTIONS = {
    "fp16": False,
    "temperature": 0.0,
    "condition_on_previous_text": False,
    "without_timestamps": True,
    "verbose": None,
}
# torch's ChooseQuantizationParams, refusing an int8 layer's input that holds NaN
QUANTIZED_NAN = "min should be less than or equal to max"
TEXTS_REMEMBERED = 64  # recent transcripts whose tokens are kept for drafts (a few per student)

__all__ = [
    "TRANSCRIBE_OPTIONS",
    "FittedWhisper",
    "Int8VocabDecoder",
    "Transcriber",
    "WindowText",
    "TranscriberLoadError",
    "load_whisper",
    "quantize_int8",
    "transcribe_window",
]


def load_whisper(spec: str, download_root: str | None = None) -> whisper.Whisper:
    """A Whisper model by name (`base.en`, downloaded to whisper's cache) or checkpoint path."""
    path = Path(spec).expanduser()
    if path.is_file():
        target = str(path)
    elif spec in whisper.available_models():
        target = spec
    else:
        raise TranscriberLoadError(
            f"Whisper model {spec!r} not found: give a checkpoint path or "
            f"one of {', '.join(whisper.available_models())}"
        )
    try:
        return whisper.load_model(target, device="cpu", download_root=download_root)
    except Exception as e:  # offline download, corrupt checkpoint: both mean "not available"
        raise TranscriberLoadError(f"cannot load Whisper model {spec!r}: {first_line(e)}") from None


class Int8VocabDecoder(TextDecoder):
    """Whisper's text decoder with the vocabulary projection as a (quantizable) Linear layer."""

    vocab_proj: nn.Module

    def forward(self, x: Tensor, xa: Tensor, kv_cache: dict | None = None) -> Tensor:
        # whisper.model.TextDecoder.forward, but for the last product.
        offset = next(iter(kv_cache.values())).shape[1] if kv_cache else 0
        x = self.token_embedding(x) + self.positional_embedding[offset : offset + x.shape[-1]]
        x = x.to(xa.dtype)
        for block in self.blocks:
            x = block(x, xa, mask=self.mask, kv_cache=kv_cache)
        return self.vocab_proj(self.ln(x)).float()


def quantize_int8(model: whisper.Whisper) -> whisper.Whisper:
    """Int8 weights for every linear layer and the vocabulary projection (in place)."""
    # whisper's Linear subclasses nn.Linear; the quantizer matches exact types, so swap them.
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is whisper.model.Linear:
                plain = nn.Linear(
                    child.in_features, child.out_features, bias=child.bias is not None
                )
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)
    decoder = model.decoder
    decoder.__class__ = Int8VocabDecoder
    n_vocab, n_state = decoder.token_embedding.weight.shape
    decoder.vocab_proj = nn.Linear(n_state, n_vocab, bias=False)
    decoder.vocab_proj.weight = decoder.token_embedding.weight
    # torch 2.13 marks its eager quantization deprecated (for torchao) and says so at every
    # start; it still works, and the start-up log's first lines are for the app's own words.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor")
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear}, dtype=torch.qint8, inplace=True
        )


def dequantized_copy(model: Whisper) -> Whisper:
    """An fp32 copy of an int8 Whisper (`quantize_int8`'s): every dynamic int8 Linear becomes an
    nn.Linear of its weights dequantized. MODEL is left as it is."""
    copy = deepcopy(model)
    for parent in list(copy.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DynamicInt8Linear):
                bias = child.bias()
                plain = nn.Linear(child.in_features, child.out_features, bias=bias is not None)
                plain.weight = nn.Parameter(child.weight().dequantize(), requires_grad=False)
                if bias is not None:
                    plain.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
                setattr(parent, name, plain)
    return copy


class FittedEncoder(AudioEncoder):
    """Whisper's audio encoder over N_CTX positions (N_CTX / 50 s of audio) instead of 1500,
    sharing ENCODER's weights: `forward` takes mel of shape (batch, n_mels, 2 × N_CTX)."""

    def __init__(self, encoder: AudioEncoder, n_ctx: int) -> None:
        nn.Module.__init__(self)  # not AudioEncoder's: its weights are ENCODER's
        self.conv1, self.conv2 = encoder.conv1, encoder.conv2
        self.blocks, self.ln_post = encoder.blocks, encoder.ln_post
        self.register_buffer(
            "positional_embedding", encoder.positional_embedding[:n_ctx], persistent=False
        )


class FittedWhisper(Whisper):
    """MODEL with an encoder window of N_CTX positions, sharing all of MODEL's weights, for
    `whisper.decode` on mel of 2 × N_CTX frames (`transcribe` pads to 30 s: not for this)."""

    def __init__(self, model: Whisper, n_ctx: int) -> None:
        nn.Module.__init__(self)  # not Whisper's: its weights are MODEL's
        self.dims = dataclasses.replace(model.dims, n_audio_ctx=n_ctx)
        self.encoder = FittedEncoder(model.encoder, n_ctx)
        self.decoder = model.decoder
        self.register_buffer("alignment_heads", model.alignment_heads, persistent=False)


def fitted_positions(n_samples: int) -> int | None:
    """Encoder positions of the fitted window for N_SAMPLES of 16 kHz audio, or None when it
    would not be shorter than Whisper's 30 s."""
    seconds = math.ceil((n_samples / SAMPLE_RATE + FIT_MARGIN_S) / FIT_STEP_S) * FIT_STEP_S
    n_ctx = int(seconds * POSITIONS_PER_S)
    return n_ctx if n_ctx < N_FRAMES // 2 else None


@dataclass(frozen=True)
class WindowText:
    """One fitted window's transcript."""

    text: str | None  # None: the decoding failed by transcribe()'s rule (see transcribe_window)
    tokens: list[int]  # the text's tokens as written
    from_draft: int  # ... of which a draft had right (tutor.draft_decoding)


def transcribe_window(
    model: Whisper, audio: np.ndarray, options: dict, draft: list[int] | None = None
) -> WindowText:
    """AUDIO's text (float32, 16 kHz, shorter than MODEL's window) from one window of MODEL's
    n_audio_ctx positions: what `model.transcribe(audio, **OPTIONS)` does with one window and
    one temperature, but with no padding beyond that window; with DRAFT (text tokens: a partial
    transcript of the same audio), decoded from its right tokens (tutor.draft_decoding). The
    text is None when the decoding failed by transcribe()'s own rule (it compresses too well:
    a phrase repeated over and over)."""
    # The window as transcribe() builds it: the audio's frames of the log-mel of the audio
    # padded with 30 s of silence, then zeros up to the window's length.
    mel = whisper.log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)
    content = mel[:, : mel.shape[-1] - N_FRAMES]
    window = whisper.pad_or_trim(content, 2 * model.dims.n_audio_ctx)
    plain = whisper.DecodingOptions(**{k: v for k, v in options.items() if k in DECODING_FIELDS})
    no_speech = options.get("no_speech_threshold", NO_SPEECH_THRESHOLD)
    drafted = None
    if draft:
        features = model.embed_audio(window[None])  # (1, n_audio_ctx, n_audio_state)
        try:
            drafted = decode_with_draft(model, features, options, draft, no_speech)
        except Exception:  # a shortcut must never cost the words: decode from scratch
            log.exception("decoding from a draft failed; decoding from scratch")
        window = features[0]  # whisper.decode takes encoded audio as it takes mel
    result, from_draft = drafted or (whisper.decode(model, window, plain), 0)
    written = list(result.tokens)
    repetitive = options.get("compression_ratio_threshold", COMPRESSION_RATIO_THRESHOLD)
    if repetitive is not None and result.compression_ratio > repetitive:
        return WindowText(None, written, from_draft)
    unlikely = options.get("logprob_threshold", LOGPROB_THRESHOLD)
    if (
        no_speech is not None
        and result.no_speech_prob > no_speech
        and (unlikely is None or result.avg_logprob <= unlikely)
    ):
        return WindowText("", written, from_draft)  # transcribe() drops such a window as silence
    return WindowText(result.text, written, from_draft)


class Transcriber:
    """Whisper on CPU; `language` is a code such as "en", or "auto" to detect it."""

    def __init__(
        self,
        model: whisper.Whisper,
        language: str = "en",
        threads: int | None = None,
        precision: str = "int8",
        thread: DedicatedThread | None = None,
        detect_speech: bool = False,
        window: str = "full",
    ) -> None:
        """THREAD runs every torch call (the app shares it with llama.cpp; see tutor.threads).
        DETECT_SPEECH: refuse recordings without speech (tutor.vad) before Whisper runs.
        WINDOW: the encoder's, `full` (30 s) or `fit` (the audio's length; see above)."""
        if precision not in ("int8", "fp32"):
            raise TranscriberLoadError(f"unknown Whisper precision {precision!r} (int8 or fp32)")
        if window not in WINDOWS:
            raise TranscriberLoadError(f"unknown Whisper window {window!r} (full or fit)")
        # One transcription at a time, always on the same thread (see tutor.threads).
        self.thread = thread or DedicatedThread("whisper")
        if threads:
            self.thread.run(torch.set_num_threads, threads)
        self.model = (
            self.thread.run(quantize_int8, model.eval()) if precision == "int8" else model.eval()
        )
        self.language = language
        self.detector = SpeechDetector() if detect_speech else None
        self.window = window
        self._fitted: dict[int, FittedWhisper] = {}  # by positions: at most 5 (FIT_STEP_S)
        self.fallbacks = 0  # fitted windows that failed and were decoded again in full
        self.nan_fallbacks = 0  # int8 transcriptions that met NaNs and were redone in fp32
        # Recent texts' tokens, as written: a draft is one of them (text re-encoded may split
        # differently). Transcriptions given a draft: tokens written, how many the draft had right.
        self._written: OrderedDict[str, list[int]] = OrderedDict()
        self.drafted_tokens = self.draft_right_tokens = 0

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        max_tokens: int | None = None,
        draft: str | None = None,
        urgent: bool = True,
        **decode_options,
    ) -> str:
        """Text of AUDIO (float32, 16 kHz, mono), or AudioError if Whisper heard no speech.

        MAX_TOKENS caps the text decoded (a short piece of speech has few words). DRAFT: the
        text of the same audio's beginning, as this transcriber wrote it (a partial transcript):
        a fitted window decodes from the tokens it has right (tutor.draft_decoding). URGENT (a
        student waits for these words): on a shared native thread, an answer step in progress
        is cut short for it (tutor.threads); a partial transcription is not. DECODE_OPTIONS
        go to whisper's transcribe (benchmarks fix the decoded length with them).
        """
        if max_tokens is not None:
            decode_options.setdefault("sample_len", max_tokens)
        language = language or self.language
        if not self.model.is_multilingual:
            language = "en"
        if self.detector is not None:
            self.detector.require_speech(audio)
        result = self.thread.run_followed(
            self._transcribe, audio, language, draft, decode_options, urgent=urgent
        )
        text = result["text"].strip()
        if not text:
            raise AudioError(
                f"No speech was recognised in the {len(audio) / SAMPLE_RATE:.1f} s "
                "recording. Please try again."
            )
        return text

    def _transcribe(
        self, audio: np.ndarray, language: str, draft: str | None, decode_options: dict
    ) -> dict:
        try:
            return self._transcribe_with(
                self.model, self._fitted, audio, language, draft, decode_options
            )
        except RuntimeError as e:
            if QUANTIZED_NAN not in str(e):
                raise
        # NaN activations reached an int8 layer (seen once under heavy load on a CPU with AMX):
        # this recording again in fp32, from the int8 weights dequantized, then dropped.
        self.nan_fallbacks += 1
        log.warning("int8 Whisper met NaN activations: transcribing this recording in fp32")
        fp32 = dequantized_copy(self.model)
        return self._transcribe_with(fp32, {}, audio, language, draft, decode_options)

    def _transcribe_with(
        self,
        whisper_model: Whisper,
        fitted: dict[int, FittedWhisper],
        audio: np.ndarray,
        language: str,
        draft: str | None,
        decode_options: dict,
    ) -> dict:
        """WHISPER_MODEL's transcript of AUDIO (its fitted windows cached in FITTED)."""
        audio = audio.astype(np.float32, copy=False)
        options = {
            "language": None if language == "auto" else language,
            **TRANSCRIBE_OPTIONS,
            **decode_options,
        }
        n_ctx = fitted_positions(len(audio)) if self.window == "fit" else None
        with torch.inference_mode():
            if n_ctx is None:
                return whisper_model.transcribe(audio, **options)
            model = fitted.get(n_ctx)
            if model is None:
                model = fitted[n_ctx] = FittedWhisper(whisper_model, n_ctx)
            draft_tokens = self._tokens_of(draft, options["language"]) if draft else None
            window = transcribe_window(model, audio, options, draft_tokens)
            if draft_tokens:
                self.drafted_tokens += len(window.tokens)
                self.draft_right_tokens += window.from_draft
            if window.text:
                self._written[window.text.strip()] = window.tokens
                while len(self._written) > TEXTS_REMEMBERED:
                    self._written.popitem(last=False)
            if window.text is None:  # a short window's repetition loop: the 30 s window instead
                self.fallbacks += 1
                return whisper_model.transcribe(audio, **options)
            return {"text": window.text}

    def _tokens_of(self, text: str, language: str | None) -> list[int]:
        """TEXT's tokens as this transcriber wrote them, or as Whisper would (after the start
        of text, with a leading space)."""
        if (tokens := self._written.get(text.strip())) is not None:
            return tokens
        tokenizer = whisper.tokenizer.get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language=language
        )
        return tokenizer.encode(" " + text.strip())
