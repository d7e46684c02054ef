"""Reading a ``f3stream tokenize`` output folder back: one file's tokens by key or input path.

Only the index and the requested rows of one shard are read, so a training loader can pick
single files out of a large corpus without loading whole shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BulkError
from .layout import INDEX_FILE, RUN_FILE

if TYPE_CHECKING:
    from ..tokens_io import Tokens


class TokenizedCorpus:
    """Read access to a ``f3stream tokenize`` output folder.

    >>> corpus = TokenizedCorpus("tokens/")
    >>> tokens = corpus.load("speaker1/utt1.wav")    # key, or the audio file's path
    >>> tokens.latents.shape                         # [frames, 64]
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        run_file, index_file = self.out_dir / RUN_FILE, self.out_dir / INDEX_FILE
        try:
            self.run = json.loads(run_file.read_text())
            lines = index_file.read_text(encoding="utf-8").splitlines()
            self.entries = [json.loads(line) for line in lines if line.strip()]
        except FileNotFoundError as e:
            raise BulkError(f"{self.out_dir} is not a `f3stream tokenize` output ({e.filename} "
                            "is missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BulkError(f"{self.out_dir}: corrupt {RUN_FILE} or {INDEX_FILE} ({e}); re-run "
                            "`f3stream tokenize` to rebuild them") from None
        self._by_key = {e["key"]: e for e in self.entries}
        self._by_path = {e["path"]: e for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        """Keys of the files tokenized without error."""
        return [e["key"] for e in self.entries if "error" not in e]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if "error" in e]

    def entry(self, path_or_key: str | os.PathLike) -> dict[str, Any]:
        e = self._by_key.get(str(path_or_key)) if not isinstance(path_or_key, Path) else None
        for p in (os.path.abspath(path_or_key), os.path.realpath(path_or_key)):
            e = e or self._by_path.get(p)
        if e is None:
            raise BulkError(f"{path_or_key} is not in {self.out_dir / INDEX_FILE} (neither a "
                            "key nor an input path of that run)")
        return e

    def load(self, path_or_key: str | os.PathLike) -> Tokens:
        """A file's :class:`~f3stream.tokens_io.Tokens`, read from its shard by slicing."""
        from safetensors import safe_open

        from ..tokens_io import Tokens

        e = self.entry(path_or_key)
        if "error" in e:
            raise BulkError(f"{e['key']} was not tokenized: {e['error']}")
        a, n = e["offset"], e["frames"]
        shard = self.out_dir / e["shard"]
        try:
            with safe_open(str(shard), framework="np") as f:
                names = set(f.keys())
                lat = f.get_slice("latents")[a:a + n]
                rep = f.get_slice("representations")[a:a + n] \
                    if "representations" in names else None
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types
            raise BulkError(f"cannot read {shard}: {err}") from None
        return Tokens(np.asarray(lat, np.float32),
                      None if rep is None else np.asarray(rep, np.float32),
                      self.run.get("sample_rate"), self.run.get("frame_rate"))


def load_tokenized(out_dir: str | os.PathLike, path_or_key: str | os.PathLike) -> Tokens:
    """One file's tokens from a ``f3stream tokenize`` output folder (by key or input path).
    For many files, make one :class:`TokenizedCorpus` and call ``load`` on it."""
    return TokenizedCorpus(out_dir).load(path_or_key)
