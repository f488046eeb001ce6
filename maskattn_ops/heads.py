"""A set of gate heads, one per gated site, and its safetensors file format.

File format (version 1), safetensors only:
- tensors keyed ``<block>.<id>.<block_index>.<parameter>``, e.g.
  ``input.4.0.features.0.weight``: the site reads straight off the key;
- metadata (strings): ``format`` = "maskattn-heads", ``format_version``, ``base_family`` (the
  UNet family trained on: "sdxl", "sd1", "sd2", ...; see ``FAMILY_NAMES``),
  ``sites`` (JSON list), ``channels`` (JSON {site: query width}), ``key_dims`` (JSON
  {site: width of the projected keys the head reads}), ``context_dim`` (the model's text width),
  ``embed_dim``, ``threshold`` (used in training), ``training`` (JSON summary), and
  optionally ``model_fingerprint`` (JSON, see ``ModelFingerprint``: which weights the
  heads were trained on; files written before it have none).
The variant (sites, widths) is read from the keys and shapes; the metadata is checked
against them, never trusted alone, and the file name means nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .fingerprint import ModelFingerprint
from .gate_head import GateHead
from .sites import Site

FORMAT = "maskattn-heads"
FORMAT_VERSION = 1
PICKLE_MAGICS = (b"PK\x03\x04", b"\x80")   # torch.save zip archives, raw pickles


# How users know the families heads record (nodes/model_family.py reads them from the host).
FAMILY_NAMES = {"sdxl": "SDXL", "sd1": "SD1.x", "sd2": "SD2.x", "sdxl-refiner": "SDXL refiner"}
# Written before the family was read from the model: the tiny demo's untrained heads.
_LEGACY_FAMILIES = {"sdxl-tiny-demo": "sdxl"}


def family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def _module_key(site_name: str) -> str:
    # ModuleDict keys may not contain dots; site names do ("input.4.0").
    return site_name.replace(".", "_")


class HeadsFileError(ValueError):
    """A heads file that cannot be used; the message names the file and the cause."""


class HeadSet(nn.Module):
    """Gate heads by site name, plus what they were made for."""

    def __init__(self, sites: dict[str, tuple[int, int]], context_dim: int, embed_dim: int = 32,
                 base_family: str = "", threshold: float = 0.5, training: dict | None = None,
                 fingerprint: ModelFingerprint | None = None):
        super().__init__()
        self.heads = nn.ModuleDict({_module_key(name): GateHead(c, kd, embed_dim)
                                    for name, (c, kd) in sites.items()})
        self.site_names = list(sites)
        self.context_dim, self.embed_dim = context_dim, embed_dim
        self.base_family = _LEGACY_FAMILIES.get(base_family, base_family)   # "": not recorded
        self.threshold = threshold
        self.training_summary = dict(training or {})
        self.fingerprint = fingerprint     # of the model trained on; None: not recorded
        self.source = ""                   # the file's name, once loaded from one

    @classmethod
    def for_sites(cls, sites: Iterable[Site], **kwargs) -> "HeadSet":
        """Fresh heads ("keep everything") for these sites of a model."""
        sites = list(sites)
        if not sites:
            raise ValueError("no sites to make gate heads for")
        return cls({s.name: (s.channels, s.heads * s.dim_head) for s in sites},
                   context_dim=sites[0].context_dim, **kwargs)

    def head(self, site_name: str) -> GateHead:
        return self.heads[_module_key(site_name)]

    def set_head(self, site_name: str, head: GateHead) -> None:
        """Puts ``head`` at a site these heads already gate."""
        if site_name not in self.site_names:
            raise KeyError(f"these heads do not gate site {site_name}")
        self.heads[_module_key(site_name)] = head

    def site_shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (self.head(n).channels, self.head(n).key_dim) for n in self.site_names}

    def metadata(self) -> dict[str, str]:
        shapes = self.site_shapes()
        return {
            "format": FORMAT, "format_version": str(FORMAT_VERSION), "base_family": self.base_family,
            "sites": json.dumps(self.site_names), "channels": json.dumps({n: c for n, (c, _) in shapes.items()}),
            "key_dims": json.dumps({n: kd for n, (_, kd) in shapes.items()}),
            "context_dim": str(self.context_dim), "embed_dim": str(self.embed_dim),
            "threshold": repr(self.threshold), "training": json.dumps(self.training_summary),
            **({"model_fingerprint": self.fingerprint.to_json()} if self.fingerprint is not None else {}),
        }

    def check_fits(self, sites: Iterable[Site], model_name: str = "the model", family: str = "") -> None:
        """Refuses heads made for another model: another UNet family (when both are
        known), other sites, widths or text width."""
        if family and self.base_family and family != self.base_family:
            raise HeadsFileError(f"these heads were trained on an {family_name(self.base_family)} model; "
                                 f"{model_name} is {family_name(family)}")
        by_name = {s.name: s for s in sites}
        missing = [n for n in self.site_names if n not in by_name]
        if missing:
            raise HeadsFileError(f"these heads gate sites {missing} that {model_name} does not have "
                                 f"(heads: {self.site_names}; model: {list(by_name)})")
        for name, (channels, key_dim) in self.site_shapes().items():
            site = by_name[name]
            if (channels, key_dim) != (site.channels, site.heads * site.dim_head):
                raise HeadsFileError(
                    f"heads for site {name} expect query width {channels} and key width {key_dim}; "
                    f"{model_name} has {site.channels} and {site.heads * site.dim_head} there")
            if self.context_dim != site.context_dim:
                raise HeadsFileError(f"heads were made for text width {self.context_dim}; "
                                     f"{model_name} has {site.context_dim}")


def save_heads(heads: HeadSet, path: str | Path) -> None:
    tensors = {f"{name}.{key}": value.detach().contiguous().cpu()
               for name in heads.site_names for key, value in heads.head(name).state_dict().items()}
    save_file(tensors, str(path), metadata=heads.metadata())


def add_fingerprint(path: str | Path, fingerprint: ModelFingerprint) -> None:
    """Rewrites a heads file with ``fingerprint`` in its metadata and the very same
    tensors (checked bit for bit after writing)."""
    path = Path(path)
    tensors, meta = _read(path)
    save_file(tensors, str(path), metadata={**meta, "model_fingerprint": fingerprint.to_json()})
    written, _ = _read(path)
    if written.keys() != tensors.keys() or any(
            written[k].dtype != t.dtype or written[k].shape != t.shape
            or written[k].reshape(-1).view(torch.uint8).ne(t.reshape(-1).view(torch.uint8)).any()
            for k, t in tensors.items()):
        raise HeadsFileError(f"{path}: the rewritten tensors differ from the original ones")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise HeadsFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        start = f.read(4)
    if start.startswith(PICKLE_MAGICS):
        raise HeadsFileError(f"{path} is a pickle / torch.save file; MaskAttn loads heads from "
                             f"safetensors only (pickles can run code when loaded)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise HeadsFileError(f"{path} is not a readable safetensors file (truncated or another format?): {e}") from None
    return tensors, metadata


def _field(path: Path, meta: dict[str, str], name: str, parse, default: str | None = None):
    """A metadata field, parsed; a missing or malformed one is named with the file."""
    raw = meta.get(name, default)
    if raw is None:
        raise HeadsFileError(f"{path}: metadata field {name!r} is missing")
    try:
        return parse(raw)
    except (ValueError, TypeError):
        raise HeadsFileError(f"{path}: metadata field {name!r} is malformed: {raw[:80]!r}") from None


def is_heads_file(path: str | Path | None) -> bool:
    """Whether ``path`` is a safetensors file whose metadata says MaskAttn heads (reads
    the header only)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:       # noqa: BLE001  (any unreadable file is simply not offered)
        return False


def load_heads(path: str | Path) -> HeadSet:
    """Reads a heads file; every problem is a HeadsFileError naming the file."""
    path = Path(path)
    tensors, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise HeadsFileError(f"{path} is a safetensors file but not MaskAttn heads (metadata format="
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
    if _field(path, meta, "format_version", int, "0") > FORMAT_VERSION:
        raise HeadsFileError(f"{path} has heads format version {meta['format_version']}; this MaskAttn "
                             f"reads up to {FORMAT_VERSION}: update the extension")
    not_float = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values() if not t.is_floating_point()})
    if not_float:
        raise HeadsFileError(f"{path}: heads are floating-point weights, this file holds {', '.join(not_float)} "
                             f"tensors (a quantized or foreign file?)")
    broken = sorted(k for k, t in tensors.items() if not torch.isfinite(t).all())
    if broken:
        raise HeadsFileError(f"{path}: {len(broken)} tensor(s) hold NaN or Inf (e.g. {broken[0]}); the heads "
                             f"are damaged: train or download them again")
    by_site: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        parts = key.split(".")
        by_site.setdefault(".".join(parts[:3]), {})[".".join(parts[3:])] = value
    try:
        shapes = {name: (t["features.0.weight"].shape[1], t["tokens.weight"].shape[1]) for name, t in by_site.items()}
        embed_dims = {t["tokens.weight"].shape[0] for t in by_site.values()}
    except KeyError as e:
        raise HeadsFileError(f"{path}: a head lacks tensor {e}; not a MaskAttn heads file of this version") from None
    if len(embed_dims) != 1:
        raise HeadsFileError(f"{path}: heads disagree on their embedding width {sorted(embed_dims)}")
    listed = _field(path, meta, "sites", json.loads, "[]")
    if not isinstance(listed, list) or sorted(listed) != sorted(by_site):
        raise HeadsFileError(f"{path}: metadata lists sites {listed} but the tensors are for {sorted(by_site)}")
    heads = HeadSet(shapes, context_dim=_field(path, meta, "context_dim", int), embed_dim=embed_dims.pop(),
                    base_family=meta.get("base_family", ""), threshold=_field(path, meta, "threshold", float, "0.5"),
                    training=_field(path, meta, "training", json.loads, "{}"))
    heads.site_names = listed
    heads.source = path.name
    if "model_fingerprint" in meta:
        heads.fingerprint = _field(path, meta, "model_fingerprint", ModelFingerprint.from_json)
    for name, state in by_site.items():
        try:
            heads.head(name).load_state_dict(state)
        except RuntimeError as e:
            raise HeadsFileError(f"{path}: the head for site {name} does not load: {e}") from None
    return heads
