"""The checkpoint's own tokenizer, through the ``tokenizers`` library only (no transformers, no torch).

LeRobot tokenizes with ``transformers.AutoTokenizer`` (5.x). Two facts shape this wrapper:

- transformers 5.x does not run ``tokenizer.json`` as written: for ``GemmaTokenizer`` and
  ``GPT2Tokenizer`` it keeps the vocabulary, merges, added tokens and post-processor from the
  file but rebuilds the normalizer, pre-tokenizer, decoder and the BPE options in code. A
  plain ``Tokenizer.from_file`` can therefore disagree with LeRobot on a real hub file. We
  apply the same rebuild (:func:`_apply_transformers5_rules`), and the tests compare the
  result with transformers itself.
- importing transformers' tokenizers imports torch whenever torch is installed, and the
  ONNX serving path must not import torch; ``tokenizers`` alone is enough.

Truncation and padding go through the ``tokenizers`` engine exactly as transformers drives
it (right side, ``longest_first``, room kept for the post-processor's ``<bos>``), except that
we always pad to ``max_length``: static shapes for ONNX. Padding tokens are masked
everywhere downstream, so this never changes the actions (a parity test proves it for
SmolVLA, whose LeRobot pipeline pads to the longest prompt instead).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors

from reflex_ros.policies.lerobot.hub_cache import resolve_repo_dir

#: the files an export copies so serving can rebuild the tokenizer offline
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

#: tokenizer_config.json keys that name special tokens transformers registers as special
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_str(value: object) -> str | None:
    """A special token entry of tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class LeRobotTokenizer:
    """Tokenize prompts exactly as LeRobot's ``TokenizerProcessorStep`` does, with static padding.

    Build it with :meth:`from_pretrained` from a hub id (read from the local cache only) or a
    plain directory holding ``tokenizer.json`` (+ ``tokenizer_config.json``), e.g. the copy an
    export makes with :meth:`save`.
    """

    def __init__(self, directory: str | os.PathLike[str], source: str | None = None) -> None:
        self.directory = Path(directory)
        #: the hub id or directory it came from (for messages)
        self.source = source or str(directory)
        config_path = self.directory / "tokenizer_config.json"
        self.config: dict = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.tokenizer_class = str(self.config.get("tokenizer_class") or "").removesuffix("Fast")
        self._tok = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        _apply_transformers5_rules(self._tok, self.config, self.tokenizer_class)

        pad = _token_str(self.config.get("pad_token"))
        pad_id = self._tok.token_to_id(pad) if pad is not None else None
        if pad_id is None:
            # transformers pads with pad_token_id; without one its padding raises. Fall back
            # to id 0 only for a tokenizer that cannot pad at all (then max_length == longest).
            pad, pad_id = (pad or "<pad>"), 0
        self.pad_token: str = pad
        self.pad_id: int = int(pad_id)

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike[str]) -> LeRobotTokenizer:
        """From a hub id in the local cache (``HF_HOME``/``HF_HUB_CACHE``) or a directory.

        Raises :class:`~reflex_ros.policies.lerobot.errors.HubFileNotFoundError` naming the hub
        id and the download command when the files are not there; never downloads.
        """
        directory = resolve_repo_dir(repo_or_dir, required=("tokenizer.json",))
        return cls(directory, source=str(repo_or_dir))

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` (an added/special token or a vocabulary entry), or None."""
        return self._tok.token_to_id(token)

    def special_token_id(self, config_key: str, default: str | None = None) -> int | None:
        """Id of the token that tokenizer_config.json names under ``config_key``
        (e.g. ``fake_image_token``), else of ``default``."""
        token = _token_str(self.config.get(config_key)) or default
        return None if token is None else self._tok.token_to_id(token)

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [B, max_length], mask bool [B, max_length])``: truncated like
        transformers (``truncation=True``), then right-padded with the pad token to exactly
        ``max_length``."""
        tok = self._tok
        tok.enable_truncation(max_length=int(max_length), stride=0, strategy="longest_first", direction="right")
        tok.enable_padding(
            direction="right", pad_id=self.pad_id, pad_type_id=0, pad_token=self.pad_token, length=int(max_length)
        )
        encodings = tok.encode_batch(list(texts), add_special_tokens=True)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), int(max_length))
        mask = np.asarray([e.attention_mask for e in encodings], dtype=bool).reshape(ids.shape)
        return ids, mask

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes with special tokens and without truncation (to fit prompts)."""
        tok = self._tok
        tok.no_truncation()
        tok.no_padding()
        return len(tok.encode(text, add_special_tokens=True).ids)

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Copy the tokenizer files into ``directory`` (an export), so serving needs neither
        the hub cache nor the network. Returns the written paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in TOKENIZER_FILES:
            src = self.directory / name
            if src.is_file():
                shutil.copyfile(src, out / name)
                written.append(out / name)
        return written


def _apply_transformers5_rules(tok: Tokenizer, config: dict, tokenizer_class: str) -> None:
    """Rebuild what transformers 5.x rebuilds in code for the tokenizer classes LeRobot uses.

    Mirrors ``GemmaTokenizer.__init__`` / ``GPT2Tokenizer.__init__`` (transformers 5.5.4) and
    the post-processor / special-token handling of their ``TokenizersBackend`` base. Other
    classes keep ``tokenizer.json`` as written (transformers loads those straight from it).
    """
    model = tok.model
    if tokenizer_class == "GemmaTokenizer":
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        model.fuse_unk = True
        model.byte_fallback = True
        model.dropout = None
        model.ignore_merges = False
        model.unk_token = _token_str(config.get("unk_token")) or "<unk>"
    elif tokenizer_class == "GPT2Tokenizer":
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
        tok.decoder = decoders.ByteLevel()
        model.continuing_subword_prefix = ""
        model.end_of_word_suffix = ""
        model.fuse_unk = False
        model.byte_fallback = False
        model.dropout = None
        model.ignore_merges = False

    # special tokens named in the config but absent from the file are added, as transformers does
    named = [_token_str(config.get(key)) for key in _NAMED_SPECIAL]
    extra = [_token_str(v) for k, v in config.items() if k.endswith("_token") and k not in _NAMED_SPECIAL]
    missing = [t for t in [*named, *extra] if t and tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(missing)])

    # the post-processor: rebuilt from add_bos_token/add_eos_token when the config states
    # either, kept from tokenizer.json otherwise, and a no-op template when there is none
    if "add_bos_token" in config or "add_eos_token" in config or tok.post_processor is None:
        bos, eos = _token_str(config.get("bos_token")), _token_str(config.get("eos_token"))
        add_bos = bool(config.get("add_bos_token", False)) and bos is not None
        add_eos = bool(config.get("add_eos_token", False)) and eos is not None
        single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
        pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
        special = []
        if add_bos:
            special.append((bos, tok.token_to_id(bos)))
        if add_eos:
            special.append((eos, tok.token_to_id(eos)))
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
