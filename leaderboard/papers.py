"""Paper and source fields of plugins, with links where they name a known paper."""

from __future__ import annotations

import re

PAPERS: tuple[tuple[str, str], ...] = (
    (r"BadNets", "https://arxiv.org/abs/1708.06733"),
    (r"Targeted Backdoor Attacks on Deep Learning Systems", "https://arxiv.org/abs/1712.05526"),
    (r"WaNet", "https://arxiv.org/abs/2102.10369"),
    (r"Label-Consistent Backdoor", "https://arxiv.org/abs/1912.02771"),
    (r"training set corruption without label poisoning|\bSIG\b", "https://arxiv.org/abs/1902.11237"),
    (r"CleanCLIP", "https://arxiv.org/abs/2303.03323"),
)
"""A pattern naming a paper, and the paper's arXiv page."""


def linked(text: str | None) -> list[tuple[str, str | None]]:
    """`text` split at ";" into parts, each with the URL of the first known paper it names (or None)."""
    parts = [part.strip() for part in (text or "").split(";") if part.strip()]
    out = []
    for part in parts:
        url = next((u for pattern, u in PAPERS if re.search(pattern, part, flags=re.IGNORECASE)), None)
        out.append((part, url))
    return out
