"""The inference engine: a parent-side Engine driving llama-cpp-python in a child process."""

from edgekit.engine.engine import Engine
from edgekit.engine.records import Chunk, ModelInfo, Request, Result, Timings, ToolCall

__all__ = ["Chunk", "Engine", "ModelInfo", "Request", "Result", "Timings", "ToolCall"]
