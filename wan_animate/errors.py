"""The one exception type for problems a user can fix."""


class WanAnimateError(Exception):
    """A problem with the user's input or settings.

    The message says what is wrong and what to do about it; the app and the CLI show it as it is.
    """


class GenerationCancelled(Exception):
    """Raised inside generation when the caller asked to stop; GPU memory is freed before it propagates."""
