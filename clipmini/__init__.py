"""clipmini: OpenAI's CLIP, small enough to read."""

__version__ = "0.1.0"
