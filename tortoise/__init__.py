"""Fast, faithful Tortoise-TTS inference. Importing this package loads no model, touches no device and downloads nothing."""

__version__ = "0.1.0"
