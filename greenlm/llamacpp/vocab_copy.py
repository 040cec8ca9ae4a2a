"""A GGUF input's own tokenizer, carried into the exported file unchanged.

A model given as a .gguf file is loaded through transformers, which rebuilds a Hugging Face tokenizer from the
file's `tokenizer.ggml.*` keys; writing the vocabulary again from that rebuild could lose what transformers
does not keep (scores, token types, the pre-tokenizer name, added keys). So every key under `tokenizer.` is
copied with its exact GGUF value type: strings as their raw bytes, numbers as the numpy values read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf

from greenlm.errors import GreenlmError

PREFIX = "tokenizer."


@dataclass
class CopiedField:
    key: str
    value: object  # a scalar, bytes, or a list of them
    vtype: gguf.GGUFValueType
    sub_type: gguf.GGUFValueType | None = None


@dataclass
class CopiedVocab:
    """Quacks like vocab.GgufVocab where the writer uses it."""

    tokenizer_model: str
    pre: str
    fields: list[CopiedField] = field(default_factory=list)
    source: str = "the input GGUF's own tokenizer keys"

    def add_to(self, writer) -> None:
        for f in self.fields:
            writer.add_key_value(f.key, f.value, f.vtype, sub_type=f.sub_type)


def _value(reader_field, index: int, vtype: gguf.GGUFValueType):
    part = reader_field.parts[index]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(part.tobytes())
    return part.tolist()[0]


def read_tokenizer_fields(path: Path) -> list[CopiedField]:
    reader = gguf.GGUFReader(str(path))
    fields = []
    for key, f in reader.fields.items():
        if not key.startswith(PREFIX):
            continue
        vtype = gguf.GGUFValueType(f.types[0])
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = gguf.GGUFValueType(f.types[-1])
            if len(f.types) != 2:
                raise GreenlmError(f"{path}: {key} is a nested array, which the exporter cannot copy")
            fields.append(CopiedField(key, [_value(f, i, sub) for i in f.data], vtype, sub))
        else:
            fields.append(CopiedField(key, _value(f, f.data[0], vtype), vtype))
    return fields


def gguf_file_vocab(path: Path, vocab_size: int) -> CopiedVocab:
    """The tokenizer keys of GGUF `path`, checked against the model's `vocab_size` embedding rows."""
    fields = {f.key: f for f in read_tokenizer_fields(path)}
    tokens = fields.get("tokenizer.ggml.tokens")
    model = fields.get("tokenizer.ggml.model")
    if tokens is None or model is None:
        raise GreenlmError(
            f"{path} holds no tokenizer (no tokenizer.ggml.model / tokens): it cannot be exported"
        )
    if len(tokens.value) != vocab_size:
        raise GreenlmError(
            f"{path} lists {len(tokens.value)} tokens but its model has {vocab_size} embedding rows: the file is "
            "inconsistent and cannot be exported"
        )
    pre = fields.get("tokenizer.ggml.pre")
    return CopiedVocab(
        tokenizer_model=model.value.decode("utf-8"),
        pre=pre.value.decode("utf-8") if pre is not None else "default",
        fields=list(fields.values()),
    )
