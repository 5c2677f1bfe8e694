"""Checkpoint files: reading every tensor of a Hugging Face-style folder (model.safetensors, sharded
safetensors with model.safetensors.index.json, pytorch_model.bin, sharded .bin with its index) and
writing them back in shards.  Used by sbops.models.pretrained."""
from __future__ import annotations

import json
import os
import re
from typing import Dict

import torch


def parse_size(size, what: str) -> int:
    """Bytes from an int or a Hugging Face size string ("5GB", "200MB", "1GiB")."""
    if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0 and float(size).is_integer():
        return int(size)   # 5e9 too
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(([KMGT])(I?))?B\s*", size.upper()) if isinstance(size, str) else None
    n = 0 if not m else int(float(m.group(1)) * (1024 if m.group(4) else 1000) ** " KMGT".index(m.group(3) or " "))
    if n <= 0:
        raise ValueError(f"{what} must be a positive int (bytes) or a size string such as '5GB' or '200MB', "
                         f"got {size!r}")
    return n


# the weight files from_pretrained reads, in its order of preference: an index (sharded), else one file
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def load_checkpoint_tensors(path: str) -> Dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in `path`, by its stored name (on the CPU)."""
    def st_load(f):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover
            raise ImportError("from_pretrained: reading .safetensors needs the safetensors package") from e
        return load_file(os.path.join(path, f))

    def bin_load(f):
        return torch.load(os.path.join(path, f), map_location="cpu", weights_only=True)

    def read(loader, f):
        """loader(f); a file that cannot be read is an error naming it (safetensors' errors do not)."""
        try:
            return loader(f)
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"from_pretrained: cannot read {os.path.join(path, f)}: {type(e).__name__}: {e}") from e

    for index, loader in zip(INDEX_FILES, (st_load, bin_load)):
        if os.path.isfile(os.path.join(path, index)):
            with open(os.path.join(path, index)) as fh:
                weight_map = json.load(fh)["weight_map"]
            out = {}
            for shard in sorted(set(weight_map.values())):
                part = read(loader, shard)
                listed = {k for k, v in weight_map.items() if v == shard}
                if set(part) != listed:
                    raise ValueError(f"from_pretrained: shard {shard} holds {sorted(set(part) ^ listed)[:5]} "
                                     f"differently from what {index} lists")
                out.update(part)
            return out
    for single, loader in zip(SINGLE_FILES, (st_load, bin_load)):
        if os.path.isfile(os.path.join(path, single)):
            return dict(read(loader, single))
    raise FileNotFoundError(f"from_pretrained: no weights in {path!r} (looked for model.safetensors[.index.json] "
                            f"and pytorch_model.bin[.index.json])")


def checkpoint_tensor_names(path: str):
    """The stored names of the checkpoint's tensors in `path` without reading their data (an index's weight_map, a
    .safetensors header, a .bin memory-mapped), or None where they cannot be told so (load_checkpoint_tensors then
    reads, and names, the problem)."""
    for index in INDEX_FILES:
        if os.path.isfile(os.path.join(path, index)):
            try:
                with open(os.path.join(path, index)) as fh:
                    return set(json.load(fh)["weight_map"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    f = os.path.join(path, "model.safetensors")
    if os.path.isfile(f):
        try:
            from safetensors import safe_open
            with safe_open(f, framework="pt") as st:
                return set(st.keys())
        except Exception:  # noqa: BLE001 -- no safetensors package, or a file it cannot read
            return None
    f = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(f):
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 -- e.g. a legacy (non-zip) file, which cannot be memory-mapped
            return None
        return set(sd) if isinstance(sd, dict) and all(isinstance(k, str) for k in sd) else None
    return None


# safetensors' dtype names of the floating types torch has
_ST_FLOAT = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_ST_OTHER = {"I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}


def _file_float_dtypes(f: str, safe: bool):
    """The floating dtypes of one weights file's tensors without reading their data (a .safetensors header where
    `safe`, else a .bin memory-mapped), or None where the file cannot tell them so."""
    if safe:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= 100_000_000:   # safetensors' own limit on a header
                return None
            header = json.loads(fh.read(n))
        names = [v["dtype"] for k, v in header.items() if k != "__metadata__"]
        if not all(isinstance(d, str) and (d in _ST_FLOAT or d in _ST_OTHER) for d in names):
            return None   # a type this table does not know: the loader names it
        return {_ST_FLOAT[d] for d in names if d in _ST_FLOAT}
    sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
        return None
    return {t.dtype for t in sd.values() if t.is_floating_point()}


def checkpoint_float_dtypes(path: str):
    """The floating dtypes of the checkpoint's tensors in `path` without reading their data (every shard's header), or
    None where they cannot be told so (load_checkpoint_tensors then reads, and names, the problem).  Never raises.
    Each file is read in the format load_checkpoint_tensors reads it in: by the index or file name it was found by."""
    try:
        files, safe = None, True
        for index, safe in zip(INDEX_FILES, (True, False)):
            if os.path.isfile(os.path.join(path, index)):
                with open(os.path.join(path, index)) as fh:
                    files = sorted(set(json.load(fh)["weight_map"].values()))
                break
        if files is None:
            found = [(f, st) for f, st in zip(SINGLE_FILES, (True, False)) if os.path.isfile(os.path.join(path, f))]
            if not found:
                return None
            files, safe = [found[0][0]], found[0][1]
        out = set()
        for f in files:
            part = _file_float_dtypes(os.path.join(path, f), safe) if isinstance(f, str) else None
            if part is None:
                return None
            out |= part
        return out
    except Exception:  # noqa: BLE001 -- any file it cannot tell the dtypes of (malformed, missing, unreadable)
        return None


def own_storage(t: torch.Tensor) -> torch.Tensor:
    """t, or a compact copy when it is a view into a larger storage (fused projections at inference
    share one storage, which safetensors refuses)."""
    if t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.contiguous().clone()


def write_tensors(sd, path, max_shard_size, safe):
    ext, stem = ("safetensors", "model") if safe else ("bin", "pytorch_model")
    shards, cur, size = [], {}, 0
    for k in sorted(sd):
        nbytes = sd[k].numel() * sd[k].element_size()
        if cur and size + nbytes > max_shard_size:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = sd[k]
        size += nbytes
    shards.append(cur)

    def write(tensors, fname):
        if safe:
            from safetensors.torch import save_file
            save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
        else:
            torch.save(tensors, os.path.join(path, fname))

    for old in os.listdir(path):  # stale weights from an earlier save would be read back
        # both formats: from_pretrained prefers safetensors, so an earlier .safetensors save would
        # shadow a new .bin one
        if re.fullmatch(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?", old):
            os.remove(os.path.join(path, old))
    if len(shards) == 1:
        write(shards[0], f"{stem}.{ext}")
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}"
        write(shard, fname)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    with open(os.path.join(path, f"{stem}.{ext}.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2, sort_keys=True)
