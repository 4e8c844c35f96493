"""The one exception type users see for bad input: it names the thing and the fix."""


class ConfigError(ValueError):
    """Bad input found before any training starts (config values, concepts, images)."""
