"""Tools the model calls: the sandboxed Python interpreter inside its reasoning (`python`), and OpenAI-style
function calling in the API (`functions`). Format and limits: docs/tools.md."""

from r1kit.tools.functions import FunctionCall, parse_tool_calls, render_chat
from r1kit.tools.python import (
    CODE_CLOSE,
    CODE_OPEN,
    OUTPUT_CLOSE,
    OUTPUT_OPEN,
    PythonSession,
    ToolCall,
    ToolConfig,
)

__all__ = ["CODE_CLOSE", "CODE_OPEN", "OUTPUT_CLOSE", "OUTPUT_OPEN", "FunctionCall", "PythonSession", "ToolCall",
           "ToolConfig", "parse_tool_calls", "render_chat"]
