"""bargein: interruption handling for voice agents."""

__version__ = "0.1.0"
