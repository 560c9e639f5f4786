"""edgekit: put open LLMs on edge boxes and serve them to IoT backends."""

__version__ = "0.1.0"
