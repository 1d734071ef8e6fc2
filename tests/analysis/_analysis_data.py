"""Shared inputs of the analysis command tests: rollouts, a perturbed "fine-tuned" copy of the
tiny model, and a Hugging Face float32 reference of both views."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import torch


def rollout_rows() -> list[dict]:
    """Three problems × two rollouts; rollout k of problem p answers 2p + k (k = 0 is right)."""
    rows = []
    for p in range(3):
        for k in range(2):
            rows.append(
                {
                    "prompt": f"What is {p} + {p}?",
                    "response": f"Let me think. Wait, {p} plus {p} is \\boxed{{{2 * p + k}}}. "
                    "<script>alert(1)</script> & done",
                    "context": f"{p} + {p} = {2 * p}",
                    "answer": str(2 * p),
                    "problem": f"p{p}",
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def perturbed_copy(model_dir: Path, out_dir: Path, scale: float = 0.2) -> Path:
    """The model with Gaussian noise on its MLP weights: same tokenizer and vocabulary, a
    different distribution (a stand-in for a fine-tuned checkpoint)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out_dir)
    generator = torch.Generator().manual_seed(0)
    for file in out_dir.glob("*.safetensors"):
        tensors = load_file(file)
        for name, value in tensors.items():
            if ".mlp." in name:
                tensors[name] = value + scale * torch.randn(value.shape, generator=generator)
        save_file(tensors, file, metadata={"format": "pt"})
    return out_dir


@torch.no_grad()
def hf_log_probs(model_dir: Path, prefix: list[int], response: list[int]) -> torch.Tensor:
    """[len(response), V] float32 log P(· | prefix ⊕ response_<t) from transformers."""
    model = _hf_model(str(model_dir))
    logits = model(torch.tensor([prefix + response])).logits[0, len(prefix) - 1 : -1]
    return logits.float().log_softmax(-1)


_MODELS: dict[str, object] = {}


def _hf_model(path: str):
    from transformers import Qwen3ForCausalLM

    if path not in _MODELS:
        _MODELS[path] = Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return _MODELS[path]


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.kl: list[float] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "data-kl" in attrs:
            self.kl.append(float(attrs["data-kl"]))

    def handle_data(self, data):
        self.text.append(data)


def check_heatmap_html(page: str) -> _Collector:
    """The page is well-formed (parsed as XML after the doctype), has no script element, and
    returns the collected data-kl values and text."""
    assert page.startswith("<!DOCTYPE html>")
    root = ET.fromstring(page.split("\n", 1)[1])
    assert root.tag == "html" and root.find(".//script") is None
    collector = _Collector()
    collector.feed(page)
    return collector
