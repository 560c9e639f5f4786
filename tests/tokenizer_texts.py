"""Seeded, varied texts for comparing tokenizers: prose, many scripts, emoji, code, digits, whitespace runs.

Each text joins a few fragments drawn from the kinds below with random separators, so the
pre-tokenizer's edge cases (digit runs, contractions, spaces before newlines, punctuation
clusters, emoji sequences, special-token strings) meet each other. Text is NFC, as typed text is.
"""

from __future__ import annotations

import random

from edgekit.testmodels import calibration_text

WORDS = [
    "Café", "naïve", "résumé", "Zürich", "Straße", "Ångström", "Dvořák", "Łódź", "São Paulo", "jalapeño",
    "Ελληνικά", "καλημέρα", "Москва", "пожалуйста", "Български", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
    "สวัสดีครับ", "你好，世界", "我想在apple工作", "東京タワー", "カタカナとひらがな", "안녕하세요 세계", "កាន់តែពិសេសអាច",
    "Tiếng Việt có dấu", "İstanbul’da ılık", "ǅemal", "ﬁnance ﬂow", "½ ¾ ² ³ µ", "™ © ® ° ± × ÷", "«ciao» „Hallo“",
]
EMOJI = [
    "😀", "🚀", "🦙🦙", "😶\u200d🌫️", "👩\u200d👩\u200d👧\u200d👦", "👍🏽", "🇩🇪🇯🇵", "1️⃣", "❤️", "🏠💡🔌", "✅ ❌", "🤖\u200d",
]
CODE = [
    "def forward(self, x):\n    return self.norm(x) * 2 + 1\n",
    "if (a && b) { return c[i++]; }\n",
    "    for i in range(10):\n\t\tprint(f\"{i:03d}\")\n",
    '{"entity_id": "light.kitchen", "state": "on", "brightness": 255}',
    "<div class=\"row\">&nbsp;</div>\r\n",
    "SELECT * FROM users WHERE id = 42;",
    "x = [1, 2, 3]  # comment\n\n\n",
    "#include <stdio.h>\nint main(void) { return 0; }",
    "$ edgekit convert ./model --outtype f16 && echo ok",
    "λx. x + 1 → ∀x∈ℝ: x² ≥ 0",
]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>", "<tool_call>", "</tool_call>", "<|python_tag|>"]
CONTRACTIONS = ["I've", "'told", "he's", "'RE", "'M", "I'll", "'D", "We'Ve", "a'lL", "don't", "it's", "you're", "''''"]
PUNCT = ["...", "!!!", "???", "------", "=======", "```", '""""', "......!!!!!!??????", "(normal)", "[x]", "--flag", "~/.cache"]
SEPARATORS = [" ", "  ", "   ", "\t", "\n", "\n\n", " \n", "\r\n", "\t\t", "    ", "", " \t ", "\n   \n"]


def _number(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randint(1, 12)))
    if kind == 1:
        return f"{rng.uniform(-1000, 1000):.{rng.randint(1, 6)}f}"
    if kind == 2:
        return f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == 3:
        return f"{rng.randrange(10**6):,}"
    if kind == 4:
        return "3" * rng.randint(1, 9)
    return f"+49 {rng.randrange(100, 999)} {rng.randrange(10**6, 10**7)}"


def _prose(rng: random.Random, lines: list[str]) -> str:
    line = rng.choice(lines)
    start = rng.randrange(max(1, len(line) - 10))
    return line[start : start + rng.randint(5, 120)]


def _fragment(rng: random.Random, lines: list[str], special: bool) -> str:
    kinds = [
        lambda: _prose(rng, lines),
        lambda: rng.choice(WORDS),
        lambda: "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3))),
        lambda: rng.choice(CODE),
        lambda: _number(rng),
        lambda: rng.choice(SEPARATORS) * rng.randint(1, 4),
        lambda: rng.choice(CONTRACTIONS),
        lambda: rng.choice(PUNCT),
    ]
    if special:
        kinds.append(lambda: rng.choice(SPECIAL))
    return rng.choice(kinds)()


def texts(count: int, seed: int = 0, special: bool = True) -> list[str]:
    """``count`` distinct texts of 1 to 6 fragments; ``special`` mixes in special-token strings."""
    rng = random.Random(seed)
    lines = [line for line in calibration_text().splitlines() if line.strip()]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        parts = [_fragment(rng, lines, special) for _ in range(rng.randint(1, 6))]
        text = "".join(p + rng.choice(SEPARATORS) for p in parts)
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out
