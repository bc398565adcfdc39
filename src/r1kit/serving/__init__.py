"""OpenAI-compatible serving: `r1kit serve`, `create_app(engine, ServerConfig(...))` in `r1kit.serving.app`.

Modules: protocol (wire format), scheduler (the thread
that owns the generation Engine), app (FastAPI routes; the reasoning/content split streams through
`r1kit.reasoning.ReasoningStream`), cli. Nothing is imported here so `r1kit --help`
stays fast.
"""
