"""The base of errors that report a user's mistake (bad params, missing input, a diverged run): `llm_core.cli`
prints them as a short block instead of a traceback. ValueError and FileNotFoundError raised by our code count too."""


class UserError(Exception):
    """A mistake of input or environment that the message explains, with the fix after its last '; '."""
