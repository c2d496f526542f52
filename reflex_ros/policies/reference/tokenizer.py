"""Byte-level tokenizer that ships with the package (numpy only, no downloads).

The reference policy has random weights, so a learned vocabulary would buy nothing; a byte
tokenizer is exact, reversible, needs no files, and keeps the ONNX path torch-free. Ids:
``pad=0, bos=1, eos=2``, byte ``b -> b + 3`` (so every id is < 259 <= vocab_size).
"""

from __future__ import annotations

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET

#: RECAP's advantage indicator, appended to the instruction for the conditioned prompt
ADVANTAGE_SUFFIX = "\nAdvantage: positive"


def _utf8_prefix(data: bytes, budget: int) -> bytes:
    """The longest prefix of ``data`` of at most ``budget`` bytes that ends on a character
    boundary, so truncation never leaves half a UTF-8 character."""
    if len(data) <= budget:
        return data
    cut = max(budget, 0)
    # step back over continuation bytes (0b10xxxxxx) so the cut lands before a lead byte
    while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut]


def tokenize(text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``[bos] + bytes + [eos]`` padded to ``max_len``.

    Returns ``(ids int64[max_len], mask bool[max_len])``. Text longer than ``max_len - 2``
    bytes is cut at a character boundary; bos and eos are always present.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (bos + eos), got {max_len}")
    body = _utf8_prefix(text.encode("utf-8"), max_len - 2)
    ids = np.full(max_len, PAD_ID, dtype=np.int64)
    mask = np.zeros(max_len, dtype=bool)
    n = len(body) + 2
    ids[0] = BOS_ID
    ids[1 : n - 1] = np.frombuffer(body, dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
    ids[n - 1] = EOS_ID
    mask[:n] = True
    return ids, mask


def detokenize(ids: np.ndarray) -> str:
    """Inverse of :func:`tokenize` (drops special tokens); handy in tests and logs."""
    data = bytes(int(i) - BYTE_OFFSET for i in np.asarray(ids).ravel() if int(i) >= BYTE_OFFSET)
    return data.decode("utf-8", errors="replace")


def cfg_prompts(instruction: str, max_len: int | None = None) -> tuple[str, str]:
    """RECAP prompt pair ``(cond, uncond)``: cond = instruction + ``"\\nAdvantage: positive"``.

    With ``max_len`` the instruction is first shortened so the tag still fits after
    tokenization; otherwise a long instruction would truncate the tag away and make cond
    equal to uncond, silently disabling guidance.
    """
    if max_len is not None:
        budget = max_len - 2 - len(ADVANTAGE_SUFFIX.encode("utf-8"))
        if budget < 0:
            raise ValueError(f"max_len {max_len} is too short for the advantage tag")
        instruction = _utf8_prefix(instruction.encode("utf-8"), budget).decode("utf-8")
    return instruction + ADVANTAGE_SUFFIX, instruction
