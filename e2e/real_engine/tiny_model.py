"""A tiny Magistral-shaped model in Mistral's native format, for the real engine's tests.

``python -m e2e.real_engine.tiny_model DIR`` writes into DIR:

* ``params.json``: dim 256, 2 layers, 8 heads, 2 KV heads (Magistral's 4:1 GQA ratio),
  head_dim 128, hidden_dim 1024, vocab 131072, bf16;
* ``consolidated.safetensors``: the weights under Mistral's checkpoint names
  (``tok_embeddings.weight``, ``layers.N.attention.wq.weight``, …, ``norm.weight``,
  ``output.weight``), about 138 MB, the same bytes for the same :data:`SEED`;
* ``tekken.json``: mistral-common's bundled Tekken file (``tekken_240911.json``, a v3 file)
  relabelled ``v7`` with its ``image`` section dropped: it then renders prompts in Magistral
  Small 2506's format (``[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]``); token ids differ
  from the real model's;
* ``SYSTEM_PROMPT.txt``: the model's own default system prompt (``system_prompt.mode:
  model`` reads it from a local model's root);
* ``magistral-tiny.json``: what the model answers (below), for the tests.

**The planted answer.** The weights are random, except that the model is made to answer
every chat with :data:`ANSWER` (``<think>\\n…\\n</think>\\n\\n…``) then ``</s>``, greedy or at
temperature 0.7 alike. The attention and feed-forward outputs (``wo``, ``w2``) are scaled
down so that the last layer's residual is, to a small error, the current token's embedding:
the model is then close to a bigram model, and the token that follows ``t`` is the one whose
``output`` row points along ``t``'s embedding. The answer is encoded as a chain of distinct
token ids (Tekken is byte-level, so any segmentation of the text decodes to it; where the
usual token was used earlier in the chain another segmentation is taken), the first one
planted after ``[/INST]`` (the last token of every chat prompt) and after ``</s>`` (so with
``ignore_eos`` the answer repeats, for long streams), ``</s>`` after the last one. Planted
logits are about 32 against at most about 8 for any other token. Prompts that do not end
with ``[/INST]`` (``/v1/completions``) get a random but deterministic continuation.

Runs with numpy and mistral-common only (both in the engine venv and the project's venv):
safetensors is a simple format (a little-endian u64 header length, a JSON header, raw
tensors), written here directly, with bf16 made from float32 by rounding to nearest even.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import os
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SEED = 20261201
GENERATOR_VERSION = 1
"""Bump when the weights or files change (it is part of :func:`model_key`)."""

DIM = 256
N_LAYERS = 2
N_HEADS = 8
N_KV_HEADS = 2
HEAD_DIM = 128
HIDDEN_DIM = 1024
VOCAB_SIZE = 131072
NUM_SPECIAL = 1000
ROPE_THETA = 1_000_000_000.0
NORM_EPS = 1e-5
MAX_POSITION = 131072

BOS_ID, EOS_ID, INST_END_ID = 1, 2, 4
"""``<s>``, ``</s>`` and ``[/INST]`` in Tekken (checked against the tokenizer file)."""

REASONING = (
    "The user wants an answer from a tiny test model. I should think first, "
    "then say the magic word exactly once."
)
CONTENT = "The magic word is **tiny**."
ANSWER = f"<think>\n{REASONING}\n</think>\n\n{CONTENT}"
SYSTEM_PROMPT = (
    "You are a tiny test model. First draft your thinking process between <think> and "
    "</think>, then answer."
)

PLANT_GAIN = 2.0
"""Planted output rows are this times the predecessor's unit embedding: a logit of about 2 x 16."""
RESIDUAL_SCALE = 1e-3
"""Standard deviation of ``wo`` and ``w2``: keeps the layers' outputs small next to the
embedding (norm about 16), so the planted logits dominate."""
OUTPUT_STD = 0.02

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Plant:
    """The answer as the chain of token ids the model follows."""

    chain: tuple[int, ...]
    text: str


def model_key() -> str:
    """A name for this generator's output (the tests cache the model under it)."""
    digest = hashlib.sha256(
        json.dumps([GENERATOR_VERSION, SEED, params(), ANSWER, SYSTEM_PROMPT]).encode()
    ).hexdigest()[:12]
    return f"magistral-tiny-v{GENERATOR_VERSION}-{digest}"


def params() -> dict[str, object]:
    """``params.json`` (Mistral's names; vLLM maps them to the HF config)."""
    return {
        "dim": DIM,
        "n_layers": N_LAYERS,
        "head_dim": HEAD_DIM,
        "hidden_dim": HIDDEN_DIM,
        "n_heads": N_HEADS,
        "n_kv_heads": N_KV_HEADS,
        "rope_theta": ROPE_THETA,
        "norm_eps": NORM_EPS,
        "vocab_size": VOCAB_SIZE,
        # Present so vLLM does not look for an HF config.json to read it from.
        "max_position_embeddings": MAX_POSITION,
        "max_seq_len": MAX_POSITION,
    }


def tekken_v7() -> dict[str, object]:
    """mistral-common's bundled Tekken file relabelled v7, ``image`` section dropped."""
    import mistral_common

    bundled = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    data: dict[str, object] = json.loads(bundled.read_text())
    config = data["config"]
    assert isinstance(config, dict)
    config["version"] = "v7"
    data.pop("image", None)
    return data


def vocab_ids(tekken: dict[str, object]) -> dict[bytes, int]:
    """Token bytes → token id (rank + the special tokens' count)."""
    vocab = tekken["vocab"]
    assert isinstance(vocab, list)
    limit = VOCAB_SIZE - NUM_SPECIAL
    return {
        base64.b64decode(entry["token_bytes"]): entry["rank"] + NUM_SPECIAL
        for entry in vocab
        if entry["rank"] < limit
    }


def plant_chain(text: str, ids: dict[bytes, int]) -> Plant:
    """Segment ``text`` into token ids, none used twice: longest unused token first."""
    data = text.encode()
    longest = max(len(b) for b in ids)
    chain: list[int] = []
    used: set[int] = set()
    pos = 0
    while pos < len(data):
        for size in range(min(longest, len(data) - pos), 0, -1):
            token = ids.get(data[pos : pos + size])
            if token is not None and token not in used:
                chain.append(token)
                used.add(token)
                pos += size
                break
        else:
            raise ValueError(f"cannot encode {data[pos:]!r} with unused tokens")
    return Plant(chain=tuple(chain), text=text)


def _unit(v: Array) -> Array:
    out: Array = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def weights(plant: Plant, *, seed: int = SEED) -> dict[str, Array]:
    """Mistral checkpoint names → float32 arrays (written as bf16)."""
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, int], std: float) -> Array:
        out: Array = rng.standard_normal(shape, dtype=np.float32)
        out *= np.float32(std)
        return out

    tensors: dict[str, Array] = {"tok_embeddings.weight": normal((VOCAB_SIZE, DIM), 1.0)}
    q_out, kv_out = N_HEADS * HEAD_DIM, N_KV_HEADS * HEAD_DIM
    for layer in range(N_LAYERS):
        prefix = f"layers.{layer}"
        tensors[f"{prefix}.attention.wq.weight"] = normal((q_out, DIM), DIM**-0.5)
        tensors[f"{prefix}.attention.wk.weight"] = normal((kv_out, DIM), DIM**-0.5)
        tensors[f"{prefix}.attention.wv.weight"] = normal((kv_out, DIM), DIM**-0.5)
        tensors[f"{prefix}.attention.wo.weight"] = normal((DIM, q_out), RESIDUAL_SCALE)
        tensors[f"{prefix}.feed_forward.w1.weight"] = normal((HIDDEN_DIM, DIM), DIM**-0.5)
        tensors[f"{prefix}.feed_forward.w2.weight"] = normal((DIM, HIDDEN_DIM), RESIDUAL_SCALE)
        tensors[f"{prefix}.feed_forward.w3.weight"] = normal((HIDDEN_DIM, DIM), DIM**-0.5)
        tensors[f"{prefix}.attention_norm.weight"] = np.ones(DIM, dtype=np.float32)
        tensors[f"{prefix}.ffn_norm.weight"] = np.ones(DIM, dtype=np.float32)
    tensors["norm.weight"] = np.ones(DIM, dtype=np.float32)
    output = normal((VOCAB_SIZE, DIM), OUTPUT_STD)
    emb = tensors["tok_embeddings.weight"]
    gain = np.float32(PLANT_GAIN)
    chain = plant.chain
    # After [/INST] (every chat prompt's last token) and after </s> (ignore_eos loops).
    output[chain[0]] = gain * (_unit(emb[INST_END_ID]) + _unit(emb[EOS_ID]))
    for prev, nxt in itertools.pairwise(chain):
        output[nxt] = gain * _unit(emb[prev])
    output[EOS_ID] = gain * _unit(emb[chain[-1]])
    tensors["output.weight"] = output
    return tensors


def to_bf16(a: Array) -> npt.NDArray[np.uint16]:
    """float32 → bfloat16 bits, rounded to nearest even (no NaNs here)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out: npt.NDArray[np.uint16] = rounded.astype(np.uint16)
    return out


def write_safetensors(path: Path, tensors: Iterable[tuple[str, Array]]) -> None:
    """A safetensors file of bf16 tensors (header: name → dtype, shape, byte offsets)."""
    blobs: list[tuple[str, list[int], bytes]] = [
        (name, list(a.shape), to_bf16(a).astype("<u2").tobytes()) for name, a in tensors
    ]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, blob in blobs:
        header[name] = {
            "dtype": "BF16",
            "shape": shape,
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for _, _, blob in blobs:
            fh.write(blob)


def generate(directory: Path) -> Path:
    """Write the model into ``directory`` (created; existing files replaced)."""
    directory.mkdir(parents=True, exist_ok=True)
    tekken = tekken_v7()
    ids = vocab_ids(tekken)
    plant = plant_chain(ANSWER, ids)
    if {BOS_ID, EOS_ID, INST_END_ID} & set(plant.chain) or min(plant.chain) < NUM_SPECIAL:
        raise AssertionError("the chain must not use special tokens")
    tensors = weights(plant)
    tmp = directory / "consolidated.safetensors.partial"
    write_safetensors(tmp, sorted(tensors.items()))
    os.replace(tmp, directory / "consolidated.safetensors")
    (directory / "tekken.json").write_text(json.dumps(tekken))
    (directory / "params.json").write_text(json.dumps(params(), indent=2) + "\n")
    (directory / "SYSTEM_PROMPT.txt").write_text(SYSTEM_PROMPT)
    expected = {
        "key": model_key(),
        "answer": ANSWER,
        "reasoning": REASONING,
        "content": CONTENT,
        "system_prompt": SYSTEM_PROMPT,
        "chain": list(plant.chain),
        "completion_tokens": len(plant.chain) + 1,  # the chain and </s>
    }
    (directory / "magistral-tiny.json").write_text(json.dumps(expected, indent=2) + "\n")
    return directory


def is_generated(directory: Path) -> bool:
    try:
        meta = json.loads((directory / "magistral-tiny.json").read_text())
    except (OSError, ValueError):
        return False
    files = ("params.json", "consolidated.safetensors", "tekken.json", "SYSTEM_PROMPT.txt")
    return meta.get("key") == model_key() and all((directory / f).is_file() for f in files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.real_engine.tiny_model", description=__doc__
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = parser.parse_args(argv)
    if not args.force and is_generated(args.directory):
        print(f"up to date: {args.directory} ({model_key()})", file=sys.stderr)
        return 0
    started = time.monotonic()
    generate(args.directory)
    size = (args.directory / "consolidated.safetensors").stat().st_size
    print(
        f"wrote {args.directory} ({model_key()}, {size / 1e6:.0f} MB) "
        f"in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
