"""The one base class for problems whose message is meant for the student, and start-up errors
that modules without heavy imports must be able to name."""


class TutorError(ValueError):
    """Bad input or an unavailable resource, explained in words for the user interface."""


class BusyError(TutorError):
    """Every answer slot is taken and the line is full: the caller should try again soon."""

    def __init__(self) -> None:
        super().__init__(
            "The tutor is busy with other students right now. Please try again in a moment."
        )


def first_line(e: BaseException) -> str:
    """An exception's first line, or its type when it has no message (for one-line errors)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class TranscriberLoadError(RuntimeError):
    """The Whisper model could not be found, downloaded or loaded."""
