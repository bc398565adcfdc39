"""Length-aware rewards: DAPO's soft overlong punishment and the cosine length-scaled reward.

Both need the completion's length in tokens, passed as ``completion_tokens`` (the tokenizer lives with the
caller), and the generation budget ``max_tokens``.

Left out: overlong *filtering* (masking truncated samples from the loss) - that is a trainer decision.
"""

from __future__ import annotations

import math


def soft_overlong_reward(completion: str, completion_tokens: int | None = None, max_tokens: int | None = None,
                         overlong_buffer: int | None = None, **_: object) -> float | None:
    """DAPO eq. 13: 0 up to ``L_max - L_cache``, then a linear ramp down to -1 at ``L_max``, -1 beyond.

    ``L_max = max_tokens``; ``L_cache = overlong_buffer`` (default: a quarter of max_tokens, DAPO's 4k of 16k
    + 4k). None when the lengths are not given.
    """
    if completion_tokens is None or max_tokens is None:
        return None
    cache = max_tokens // 4 if overlong_buffer is None else overlong_buffer
    expected = max_tokens - cache
    if completion_tokens <= expected:
        return 0.0
    if completion_tokens <= max_tokens:
        return (expected - completion_tokens) / cache
    return -1.0


def cosine_scaled(correct: bool, completion_tokens: int, max_tokens: int, min_value_wrong: float = -1.0,
                  max_value_wrong: float = -0.5, min_value_correct: float = 0.5,
                  max_value_correct: float = 1.0) -> float:
    """Cosine length scaling (Yeo et al. 2025, "Demystifying Long CoT"), as in open-r1.

    ``r = min + (max - min) * (1 + cos(pi * L / L_max)) / 2``: short correct answers earn max_value_correct,
    long ones min_value_correct; for wrong answers the ends swap, so a long wrong answer is punished less
    than a short one (max_value_wrong at L_max).
    """
    progress = min(completion_tokens, max_tokens) / max_tokens
    cosine = math.cos(progress * math.pi)
    if correct:
        lo, hi = min_value_correct, max_value_correct
    else:
        lo, hi = max_value_wrong, min_value_wrong
    return lo + 0.5 * (hi - lo) * (1.0 + cosine)
