"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (file, key or value); the message names it."""


class ConfigError(UserError):
    """An unknown config key or an out-of-range value."""


class DataError(UserError):
    """A missing, corrupt or malformed data file."""
