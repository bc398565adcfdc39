"""Verifiable rewards: math answer checking, a code sandbox, format, language and length rewards."""

from r1kit.rewards.answer import (
    answer_in,
    boxed_contents,
    choice_in,
    extract_answer,
    extract_choice,
    split_reasoning,
)
from r1kit.rewards.code import TestReport, outputs_match, run_tests, run_tests_batch
from r1kit.rewards.format import format_reward
from r1kit.rewards.language import language_reward
from r1kit.rewards.length import cosine_scaled, soft_overlong_reward
from r1kit.rewards.math_check import math_equal
from r1kit.rewards.registry import (
    REWARDS,
    accuracy_reward,
    code_in,
    combine_rewards,
    cosine_reward,
    extract_code,
    extract_last_number,
    get_reward,
    last_number_in,
    register_reward,
)
from r1kit.rewards.sandbox import sandbox_info

__all__ = [
    "REWARDS", "TestReport", "accuracy_reward", "answer_in", "boxed_contents", "choice_in", "code_in",
    "combine_rewards", "cosine_reward", "cosine_scaled", "extract_answer", "extract_choice", "extract_code",
    "extract_last_number", "format_reward", "get_reward", "language_reward", "last_number_in", "math_equal",
    "outputs_match", "register_reward", "run_tests", "run_tests_batch", "sandbox_info", "soft_overlong_reward",
    "split_reasoning",
]
