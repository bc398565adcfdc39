"""OpenAI-compatible serving: `r1kit serve`, `create_app(engine, ServerConfig(...))` in `r1kit.serving.app`.

Modules: protocol (wire format), reasoning_stream (streamed reasoning/content split), scheduler (the thread
that owns the generation Engine), app (FastAPI routes), cli. Nothing is imported here so `r1kit --help`
stays fast.
"""
