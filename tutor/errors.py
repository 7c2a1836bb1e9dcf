"""The one base class for problems whose message is meant for the student."""


class TutorError(ValueError):
    """Bad input or an unavailable resource, explained in words for the user interface."""
