"""Re-export: the incremental reasoning split lives with the reply format in `r1kit.reasoning`."""

from r1kit.reasoning import ReasoningStream

__all__ = ["ReasoningStream"]
