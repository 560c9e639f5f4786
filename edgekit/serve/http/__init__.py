"""The HTTP front end of `edgekit serve`: Ollama- and OpenAI-compatible APIs over the daemon core.

app.py (routes, API key, body limit, error shapes), ollama.py and openai.py (each wire format to
the engine's records and back), models.py (the served model as each API lists it), jobs.py
(a request's job in the core, its output carried into the event loop), server.py (uvicorn's life).
"""

from edgekit.serve.http.server import HttpFrontEnd

__all__ = ["HttpFrontEnd"]
