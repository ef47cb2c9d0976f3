"""Pretrained ViT encoders from local files (`model.init_encoder=PATH`; docs/design.md#pretrained-encoders).

Three layouts, detected from the path and the keys:

- Hugging Face `transformers` (`ViTModel`, or a model whose keys start with `vit.`): a folder with
  config.json and model.safetensors or pytorch_model.bin, or a .safetensors / .bin file alone;
- timm (`patch_embed.proj`, `pos_embed`, `cls_token`, `blocks.N.attn.qkv`, `norm`): a state dict saved
  with torch.save (.pth / .pt / .bin) or as .safetensors;
- big_vision / AugReg (`embedding/kernel`, `cls`, `Transformer/encoderblock_N/...`): an .npz, with the
  original ViT's names (`Transformer/posembed_input/pos_embedding`, `MultiHeadDotProductAttention_1`,
  `LayerNorm_2`, `MlpBlock_3`) or big_vision's (`pos_embedding` without the class token's position,
  `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`), optionally under `params/`.

The encoder must be built as the standard ViT (`stem="patch"`, `pos="learned"`, the file's patch size,
width, depth, heads and MLP width, and its layer-norm epsilon); the loader checks what the file records
and raises `DataError` naming the file and the first key or shape that disagrees. The position embedding
is resized to the encoder's grid with bicubic interpolation (`align_corners=False`, as HF's
`interpolate_pos_encoding`). The class token is kept (with its position embedding folded in) when the
encoder has one (`cls_token=True`: the same patch features as the source model), else dropped (the patch
features then differ from the source model's until fine-tuned). Heads of a classifier (`head`, `pooler`,
`pre_logits`, ...) are ignored; any other key the encoder has no place for is an error, so that a variant
(layer scale, register tokens, q/k norms) is never loaded half-way.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.files import read_json
from ..errors import ConfigError, DataError
from .vit import ViTEncoder

HF_FILES = ("model.safetensors", "pytorch_model.bin")
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# Keys of a classifier's head, which the encoder has no use for (per layout: key prefixes).
IGNORED = {"hf": ("pooler.", "classifier."), "timm": ("head.", "head_drop.", "fc_norm.", "pre_logits."),
           "npz": ("head/", "pre_logits/", "MAPHead_0/")}


@dataclass
class Converted:
    """A checkpoint in the encoder's names: our key -> tensor, and the file's key and shape it came from."""

    path: str
    layout: str
    tensors: dict = field(default_factory=dict)  # our key -> FloatTensor (in our layout)
    sources: dict = field(default_factory=dict)  # our key -> (file key, file shape)
    heads: Optional[int] = None  # when the file records it
    ln_eps: Optional[float] = None  # when the file records it
    has_cls: bool = False
    notes: list = field(default_factory=list)  # what the one log line says besides the layout

    def put(self, ours: str, tensor: torch.Tensor, file_key: str, file_shape) -> None:
        self.tensors[ours] = tensor.float().contiguous()
        self.sources[ours] = (file_key, tuple(file_shape))


class _Reader:
    """A file's tensors by key; `get` names the file and the key when it is missing, and records what was read."""

    def __init__(self, path: str, tensors: dict, prefix: str = ""):
        self.path, self.tensors, self.prefix, self.used = path, tensors, prefix, set()

    def has(self, key: str) -> bool:
        return self.prefix + key in self.tensors

    def get(self, key: str) -> torch.Tensor:
        full = self.prefix + key
        if full not in self.tensors:
            raise DataError(f"{self.path}: no key '{full}' (not a complete ViT checkpoint in this layout)")
        self.used.add(full)
        value = self.tensors[full]
        return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value, dtype=np.float32))

    def count_blocks(self, pattern: str) -> int:
        """1 + the largest block index N in keys matching `pattern` (a regex with one group for N)."""
        found = [int(m.group(1)) for k in self.tensors if (m := re.match(re.escape(self.prefix) + pattern, k))]
        return max(found) + 1 if found else 0

    def check_all_used(self, ignored: tuple) -> None:
        for key in self.tensors:
            inside = key.startswith(self.prefix)  # e.g. an npz's optimizer state lies outside params/
            if inside and key not in self.used and not key[len(self.prefix):].startswith(ignored):
                raise DataError(f"{self.path}: key '{key}' has no place in the encoder (a ViT variant this loader "
                                "does not convert)")


def load_encoder(path: str, encoder: ViTEncoder) -> str:
    """Load the ViT checkpoint at `path` into `encoder` (layout detected); returns one line saying what it did."""
    converted = read(path)
    state = fit(converted, encoder)
    encoder.load_state_dict(state)
    return (f"encoder initialised from {path} ({converted.layout} layout, {len(encoder.blocks)} blocks"
            + "".join(f"; {n}" for n in converted.notes) + ")")


def read(path: str) -> Converted:
    """The checkpoint at `path` converted to the encoder's names, its layout detected from the path and keys."""
    if not os.path.exists(path):
        raise ConfigError(f"config key 'model.init_encoder': {path} does not exist")
    if os.path.isdir(path):
        return from_hf_folder(path)
    if path.endswith(".npz"):
        return from_npz(path)
    if path.endswith(".safetensors"):
        tensors = _read_safetensors(path)
    elif path.endswith(TORCH_SUFFIXES):
        tensors = _read_torch(path)
    else:
        raise ConfigError(f"config key 'model.init_encoder': {path}: not a known checkpoint file (a folder, "
                          f".safetensors, {', '.join(TORCH_SUFFIXES)} or .npz)")
    if any(k.startswith(("embeddings.", "vit.embeddings.")) for k in tensors):
        return from_hf(path, tensors)
    if any(k.endswith("patch_embed.proj.weight") for k in tensors):
        return from_timm(path, tensors)
    first = next(iter(tensors), "none")
    raise DataError(f"{path}: not a ViT checkpoint in a known layout (HF ViTModel or timm; first key '{first}')")


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(f"config key 'model.init_encoder': reading {path} needs the safetensors package "
                          "(pip install safetensors)") from None
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # a truncated or foreign file
        raise DataError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None


def _read_torch(path: str) -> dict:
    """A torch.save'd state dict (weights only: no pickled code), unwrapped from {'model': ...} or {'state_dict': ...}."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path}: not a readable torch state dict or unsafe to load ({type(e).__name__})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: not a state dict (a mapping of names to tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def from_hf_folder(path: str) -> Converted:
    """A `save_pretrained` folder: config.json (heads, eps, patch size) and the weights file."""
    weights = next((os.path.join(path, n) for n in HF_FILES if os.path.exists(os.path.join(path, n))), None)
    if weights is None:
        raise DataError(f"{path}: no {' or '.join(HF_FILES)} in this folder")
    config_path = os.path.join(path, "config.json")
    config = read_json(config_path)
    if config.get("hidden_act", "gelu") != "gelu":
        raise DataError(f"{config_path}: hidden_act {config['hidden_act']!r}, the encoder's MLP uses exact 'gelu'")
    tensors = _read_safetensors(weights) if weights.endswith(".safetensors") else _read_torch(weights)
    return from_hf(weights, tensors, heads=config.get("num_attention_heads"), ln_eps=config.get("layer_norm_eps"))


def from_hf(path: str, tensors: dict, heads: Optional[int] = None, ln_eps: Optional[float] = None) -> Converted:
    """transformers' ViTModel names (or `vit.`-prefixed, as in ViTForImageClassification)."""
    r = _Reader(path, tensors, "vit." if any(k.startswith("vit.embeddings.") for k in tensors) else "")
    out = Converted(path, "transformers ViT", heads=heads, ln_eps=ln_eps)
    _put(out, r, "stem.weight", "embeddings.patch_embeddings.projection.weight")
    _put(out, r, "stem.bias", "embeddings.patch_embeddings.projection.bias")
    _positions(out, r, "embeddings.position_embeddings", "embeddings.cls_token")
    depth = r.count_blocks(r"encoder\.layer\.(\d+)\.")
    for i in range(depth):
        p, q = f"encoder.layer.{i}.", f"blocks.{i}."
        _put(out, r, q + "ln1.weight", p + "layernorm_before.weight")
        _put(out, r, q + "ln1.bias", p + "layernorm_before.bias")
        for part in ("weight", "bias"):
            names = [f"{p}attention.attention.{n}.{part}" for n in ("query", "key", "value")]
            out.put(q + f"attn.qkv.{part}", torch.cat([r.get(n) for n in names]), names[0], r.get(names[0]).shape)
        _put(out, r, q + "attn.proj.weight", p + "attention.output.dense.weight")
        _put(out, r, q + "attn.proj.bias", p + "attention.output.dense.bias")
        _put(out, r, q + "ln2.weight", p + "layernorm_after.weight")
        _put(out, r, q + "ln2.bias", p + "layernorm_after.bias")
        _put(out, r, q + "mlp.fc1.weight", p + "intermediate.dense.weight")
        _put(out, r, q + "mlp.fc1.bias", p + "intermediate.dense.bias")
        _put(out, r, q + "mlp.fc2.weight", p + "output.dense.weight")
        _put(out, r, q + "mlp.fc2.bias", p + "output.dense.bias")
    _put(out, r, "ln.weight", "layernorm.weight")
    _put(out, r, "ln.bias", "layernorm.bias")
    r.check_all_used(IGNORED["hf"])
    return out


def from_timm(path: str, tensors: dict) -> Converted:
    """timm's VisionTransformer names (qkv already fused, as ours)."""
    r = _Reader(path, tensors)
    out = Converted(path, "timm")
    _put(out, r, "stem.weight", "patch_embed.proj.weight")
    _put(out, r, "stem.bias", "patch_embed.proj.bias")
    _positions(out, r, "pos_embed", "cls_token")
    for i in range(r.count_blocks(r"blocks\.(\d+)\.")):
        p, q = f"blocks.{i}.", f"blocks.{i}."
        for ours, theirs in (("ln1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"),
                             ("ln2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            _put(out, r, f"{q}{ours}.weight", f"{p}{theirs}.weight")
            _put(out, r, f"{q}{ours}.bias", f"{p}{theirs}.bias")
    _put(out, r, "ln.weight", "norm.weight")
    _put(out, r, "ln.bias", "norm.bias")
    r.check_all_used(IGNORED["timm"])
    return out


def from_npz(path: str) -> Converted:
    """big_vision / AugReg .npz: Flax kernels (in, out), attention kernels split by head, HWIO patch kernel."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    prefix = next((p for p in ("opt/target/", "params/img/", "params/", "") if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise DataError(f"{path}: no key 'embedding/kernel' (not a big_vision / AugReg ViT checkpoint)")
    r = _Reader(path, arrays, prefix)
    out = Converted(path, "big_vision")
    kernel = r.get("embedding/kernel")  # (P, P, 3, D)
    out.put("stem.weight", kernel.permute(3, 2, 0, 1), prefix + "embedding/kernel", kernel.shape)
    _put(out, r, "stem.bias", "embedding/bias")
    pos = "Transformer/posembed_input/pos_embedding" if r.has("Transformer/posembed_input/pos_embedding") else \
        "pos_embedding"
    _positions(out, r, pos, "cls")
    depth = r.count_blocks(r"Transformer/encoderblock_(\d+)/")
    original = r.has("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")
    attn, ln2, mlp = ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3") if original else \
        ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
    for i in range(depth):
        p, q = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        _norm(out, r, q + "ln1", p + "LayerNorm_0")
        kernels = [r.get(f"{p}{attn}/{n}/kernel") for n in ("query", "key", "value")]  # (D, heads, head_dim)
        first = f"{prefix}{p}{attn}/query/kernel"
        if kernels[0].ndim != 3:
            raise DataError(f"{path}: '{first}' has shape {tuple(kernels[0].shape)}, expected (width, heads, head_dim)")
        out.heads = kernels[0].shape[1]
        out.put(q + "attn.qkv.weight", torch.cat([k.flatten(1).T for k in kernels]), first, kernels[0].shape)
        biases = [r.get(f"{p}{attn}/{n}/bias").flatten() for n in ("query", "key", "value")]
        out.put(q + "attn.qkv.bias", torch.cat(biases), f"{prefix}{p}{attn}/query/bias", biases[0].shape)
        proj = r.get(f"{p}{attn}/out/kernel")  # (heads, head_dim, D)
        out.put(q + "attn.proj.weight", proj.flatten(0, -2).T, f"{prefix}{p}{attn}/out/kernel", proj.shape)
        _put(out, r, q + "attn.proj.bias", f"{p}{attn}/out/bias")
        _norm(out, r, q + "ln2", p + ln2)
        for n in (0, 1):
            dense = f"{p}{mlp}/Dense_{n}/"
            kernel = r.get(dense + "kernel")
            out.put(f"{q}mlp.fc{n + 1}.weight", kernel.T, prefix + dense + "kernel", kernel.shape)
            _put(out, r, f"{q}mlp.fc{n + 1}.bias", dense + "bias")
    _norm(out, r, "ln", "Transformer/encoder_norm")
    r.check_all_used(IGNORED["npz"])
    return out


def _put(out: Converted, r: _Reader, ours: str, theirs: str) -> None:
    value = r.get(theirs)
    out.put(ours, value, r.prefix + theirs, value.shape)


def _norm(out: Converted, r: _Reader, ours: str, theirs: str) -> None:
    """A Flax LayerNorm (scale, bias) -> ours (weight, bias)."""
    _put(out, r, ours + ".weight", theirs + "/scale")
    _put(out, r, ours + ".bias", theirs + "/bias")


def _positions(out: Converted, r: _Reader, pos_key: str, cls_key: str) -> None:
    """The patch position embedding as `pos` (n, D) and the class token plus its position (if it has one) as `cls`.

    A table of g*g + 1 rows holds the class token's position first (HF, timm, AugReg); one of g*g rows has
    none (big_vision, timm's no_embed_class)."""
    pos = r.get(pos_key)
    table = pos.reshape(-1, pos.shape[-1])
    rows = table.shape[0]
    with_cls_row = not _is_square(rows) and _is_square(rows - 1)
    if not _is_square(rows) and not with_cls_row:
        raise DataError(f"{r.path}: '{r.prefix + pos_key}' has shape {tuple(pos.shape)}: {rows} positions are "
                        "neither a square grid nor one plus a square grid")
    patches = table[1:] if with_cls_row else table
    out.put("pos", patches, r.prefix + pos_key, pos.shape)
    if r.has(cls_key):
        cls = r.get(cls_key).reshape(-1)
        out.put("cls", cls + table[0] if with_cls_row else cls, r.prefix + cls_key, r.get(cls_key).shape)
        out.has_cls = True


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def resize_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(g*g, D) position embedding -> (grid*grid, D), bicubic (align_corners=False, as HF's ViT)."""
    g = math.isqrt(pos.shape[0])
    if g == grid:
        return pos
    image = pos.reshape(g, g, -1).permute(2, 0, 1)[None]  # (1, D, g, g)
    resized = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return resized[0].permute(1, 2, 0).reshape(grid * grid, -1)


def fit(converted: Converted, encoder: ViTEncoder) -> dict:
    """The encoder's state dict from a converted checkpoint: checks patch size, width, depth, heads, eps, shapes."""
    c, path = converted, converted.path
    ours = encoder.state_dict()
    if "pos" not in ours or not isinstance(encoder.stem, torch.nn.Conv2d):
        raise ConfigError("config key 'model.init_encoder': the encoder must be a standard ViT "
                          "(model.stem=patch, model.pos=learned)")
    stem_key, stem_shape = c.sources["stem.weight"]
    stem, want = c.tensors["stem.weight"], tuple(ours["stem.weight"].shape)  # (width, 3, P, P)
    if stem.ndim == 4 and tuple(stem.shape[2:]) != want[2:]:
        raise DataError(f"{path}: '{stem_key}' has shape {stem_shape}: patch size {stem.shape[2]}, "
                        f"model.patch_size is {want[2]}")
    if stem.ndim == 4 and stem.shape[0] != want[0]:
        raise DataError(f"{path}: '{stem_key}' has shape {stem_shape}: width {stem.shape[0]}, model.width is {want[0]}")
    depth = sum(1 for k in c.tensors if k.endswith(".ln1.weight"))
    if depth != len(encoder.blocks):
        raise DataError(f"{path}: {depth} encoder blocks, model.encoder_depth is {len(encoder.blocks)}")
    heads = encoder.blocks[0].attn.heads
    if c.heads is not None and c.heads != heads:
        raise DataError(f"{path}: {c.heads} attention heads, model.heads is {heads}")
    eps = encoder.ln.eps
    if c.ln_eps is not None and not math.isclose(c.ln_eps, eps, rel_tol=1e-6):
        raise DataError(f"{path}: layer_norm_eps {c.ln_eps:g} (config.json), model.encoder_ln_eps is {eps:g}")
    if c.ln_eps is None:
        c.notes.append(f"layer-norm eps {eps:g} from model.encoder_ln_eps: the file does not record it")
    if c.heads is None:
        c.notes.append(f"{heads} heads from model.heads: the file does not record them")
    state = dict(c.tensors)
    g = math.isqrt(state["pos"].shape[0])
    state["pos"] = resize_positions(state["pos"], encoder.grid)
    if g != encoder.grid:
        c.notes.append(f"positions resized {g}x{g} -> {encoder.grid}x{encoder.grid} (bicubic)")
    if "cls" in ours and not c.has_cls:
        raise DataError(f"{path}: no class token, set model.cls_token=false")
    if "cls" not in ours and c.has_cls:
        del state["cls"]
        c.notes.append("class token dropped (model.cls_token=false)")
    for key, value in ours.items():
        if key in state and state[key].shape != value.shape:
            file_key, file_shape = c.sources[key]
            raise DataError(f"{path}: '{file_key}' has shape {file_shape}, which does not fit the encoder's "
                            f"{key} {tuple(value.shape)}")
    return state
