"""Hugging Face model directories read and written one tensor at a time (safetensors).

The safetensors format is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw bytes. Reading with plain ``readinto`` (no
mmap) keeps exactly the tensors we hold in memory; writing plans every shard's header from the
tensor shapes first, so tensors can then be appended as they are produced.
"""

import json
import os
import shutil
import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Files of a model directory that are not tokenizer or generation files.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".ckpt")
_NOT_COPIED = ("config.json", INDEX_FILE, "pytorch_model.bin.index.json")

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class CheckpointFormatError(ValueError):
    """A model directory that cannot be read or written, worded with the file and tensor."""


@dataclass(frozen=True)
class TensorEntry:
    file: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    begin: int
    end: int


def _read_header(path: str) -> Tuple[Dict[str, dict], int]:
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise CheckpointFormatError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > os.path.getsize(path):
            raise CheckpointFormatError(f"{path}: not a safetensors file (bad header length)")
        header = json.loads(handle.read(length))
    return header, 8 + length


class SafetensorsReader:
    """Tensors of a Hugging Face directory (one model.safetensors or shards + index), read lazily."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, INDEX_FILE)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as handle:
                weight_map = json.load(handle).get("weight_map", {})
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(os.path.join(directory, SINGLE_FILE)):
            files = [SINGLE_FILE]
        else:
            raise CheckpointFormatError(
                f"{directory}: no {SINGLE_FILE} and no {INDEX_FILE} (only safetensors is read)")
        self.entries: Dict[str, TensorEntry] = {}
        for file in files:
            path = os.path.join(directory, file)
            if not os.path.isfile(path):
                names = sorted(n for n, f in weight_map.items() if f == file)
                raise CheckpointFormatError(
                    f"{path}: shard listed in {INDEX_FILE} is missing "
                    f"(it holds {len(names)} tensors, e.g. {names[0]})")
            header, data_start = _read_header(path)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] not in _DTYPES:
                    raise CheckpointFormatError(f"{path}: tensor {name} has unsupported dtype "
                                                f"{info['dtype']}")
                begin, end = info["data_offsets"]
                self.entries[name] = TensorEntry(path, _DTYPES[info["dtype"]],
                                                 tuple(info["shape"]), data_start + begin,
                                                 data_start + end)

    def read(self, name: str) -> torch.Tensor:
        """Returns tensor ``name`` read from its file into fresh memory."""
        entry = self.entries[name]
        buffer = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
        with open(entry.file, "rb") as handle:
            handle.seek(entry.begin)
            if handle.readinto(buffer.numpy()) != buffer.numel():
                raise CheckpointFormatError(f"{entry.file}: tensor {name} is truncated")
        return buffer.view(entry.dtype).reshape(entry.shape)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: List[TensorSpec], max_shard_bytes: int) -> List[List[TensorSpec]]:
    """Returns the specs cut, in order, into shards of at most ``max_shard_bytes`` (or one tensor)."""
    shards: List[List[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


class ShardedSafetensorsWriter:
    """Writes tensors, in the planned order, into model-0000i-of-0000n.safetensors plus the index."""

    def __init__(self, directory: str, specs: List[TensorSpec], max_shard_bytes: int):
        self.directory = directory
        self.shards = plan_shards(specs, max_shard_bytes)
        count = len(self.shards)
        self.files = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self.order = [(shard, spec) for shard, specs_ in enumerate(self.shards) for spec in specs_]
        self.position = 0
        self.handle = None

    def _open(self, shard: int) -> None:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for spec in self.shards[shard]:
            header[spec.name] = {"dtype": _DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                                 "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # safetensors aligns the data start to 8 bytes
        self.handle = open(os.path.join(self.directory, self.files[shard]), "wb")
        self.handle.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Appends ``tensor``, which must be the next one planned, to its shard file."""
        shard, spec = self.order[self.position]
        if name != spec.name or tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise CheckpointFormatError(
                f"tensor {name} {tuple(tensor.shape)} {tensor.dtype} arrived where {spec.name} "
                f"{spec.shape} {spec.dtype} was planned")
        first_of_shard = self.position == 0 or self.order[self.position - 1][0] != shard
        if first_of_shard:
            if self.handle:
                self.handle.close()
            self._open(shard)
        self.handle.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        self.position += 1

    def close(self) -> None:
        """Closes the last shard and writes the index; raises if a planned tensor never came."""
        if self.handle:
            self.handle.close()
        if self.position != len(self.order):
            raise CheckpointFormatError(f"tensor {self.order[self.position][1].name} was never written")
        weight_map = {spec.name: self.files[shard] for shard, spec in self.order}
        total = sum(spec.nbytes for _, spec in self.order)
        with open(os.path.join(self.directory, INDEX_FILE), "w", encoding="utf-8") as handle:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle, indent=2)


def copy_tokenizer_files(source: str, target: str) -> List[str]:
    """Returns the names of the tokenizer/generation files copied from ``source`` to ``target``."""
    copied = []
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if (not os.path.isfile(path) or name in _NOT_COPIED or name.endswith(_WEIGHT_SUFFIXES)
                or name.startswith(".")):
            continue
        shutil.copy2(path, os.path.join(target, name))
        copied.append(name)
    return copied


def write_json(path: str, value: dict) -> None:
    """Writes ``value`` as indented JSON to ``path``."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.write("\n")


def dtype_name(dtype: torch.dtype) -> str:
    """Returns the Hugging Face config name of a torch dtype ('bfloat16', 'float32')."""
    return str(dtype).removeprefix("torch.")

