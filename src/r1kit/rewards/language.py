"""Language-consistency reward (DeepSeek-R1 §2.3.3): the fraction of the reasoning in the target language.

R1 measures "the proportion of target language words in the CoT". Here a *word* is a maximal run of letters
of one script; words made of digits, symbols or LaTeX commands (``\\frac``) do not count either way. Each
CJK character counts as one word, since those scripts do not separate words with spaces. The target is
given as a language code and mapped to a script; languages sharing a script (en/fr/de) are not told apart.

Left out: lexical language identification within a script.
"""

from __future__ import annotations

import re
import unicodedata

from r1kit.reasoning import split_reply

LANGUAGE_SCRIPTS = {
    "en": "LATIN", "fr": "LATIN", "de": "LATIN", "es": "LATIN", "it": "LATIN", "pt": "LATIN", "vi": "LATIN",
    "zh": "CJK", "ja": "JAPANESE", "ko": "HANGUL", "ru": "CYRILLIC", "uk": "CYRILLIC", "ar": "ARABIC",
    "he": "HEBREW", "el": "GREEK", "hi": "DEVANAGARI", "th": "THAI",
}
_SINGLE_CHAR_WORDS = {"CJK", "HIRAGANA", "KATAKANA"}


def char_script(ch: str) -> str | None:
    """The script of one letter ('LATIN', 'CJK', 'CYRILLIC', ...), or None for non-letters."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    if name.startswith("CJK"):
        return "CJK"
    return name.split(" ")[0] if name else None


def script_words(text: str) -> list[str]:
    """The script of every word of `text`, LaTeX commands removed (one entry per CJK character)."""
    text = re.sub(r"\\[A-Za-z]+", " ", text)
    scripts: list[str] = []
    prev = None
    for ch in text:
        s = char_script(ch)
        if s is not None and (s != prev or s in _SINGLE_CHAR_WORDS):
            scripts.append(s)
        prev = s
    return scripts


def language_reward(completion: str, language: str = "en", prefilled_think: bool | None = None,
                    **_: object) -> float | None:
    """Fraction of the reasoning's words in `language`'s script; None for an unknown language code.

    The reasoning is split by `r1kit.reasoning` (a reply cut off inside its block is all reasoning). A reply
    without reasoning is scored on its answer; with no words at all it scores 1.0 (nothing is in the wrong
    language).
    """
    target = LANGUAGE_SCRIPTS.get(language)
    if target is None:
        return None
    reasoning, answer = split_reply(completion, bool(prefilled_think))
    words = script_words(reasoning if reasoning.strip() else (answer or ""))
    if not words:
        return 1.0
    ok = {"CJK", "HIRAGANA", "KATAKANA"} if target == "JAPANESE" else {target}
    return sum(w in ok for w in words) / len(words)
