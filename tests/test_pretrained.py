"""Pretrained ViT encoders from local files (rewardtune/model/pretrained.py): a random transformers ViTModel,
saved, loaded into our encoder, gives the same patch features; the same weights written in timm's and
big_vision's layouts (by the small independent converters below) give them too; position embeddings are
resized bicubically as HF's own interpolation does; a file that does not fit ends with one line, exit code 2."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from rewardtune.config import from_dict
from rewardtune.errors import ConfigError, DataError
from rewardtune.model.encdec import build_model
from rewardtune.model.pretrained import load_encoder
from rewardtune.model.vit import ViTEncoder
from rewardtune.recipes import recipe_names, resolve

transformers = pytest.importorskip("transformers")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64)


def hf_vit(seed=0, **overrides):
    """A small random transformers ViTModel; every parameter perturbed (layer norms too) so nothing is trivial."""
    torch.manual_seed(seed)
    model = transformers.ViTModel(transformers.ViTConfig(**{**SMALL, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def saved_state(hf, folder):
    """The checkpoint's tensors under the names transformers writes to disk (the ViTModel layout; transformers 5
    renames the modules in memory and maps them back when it saves)."""
    from safetensors.torch import load_file
    hf.save_pretrained(folder)
    return load_file(os.path.join(folder, "model.safetensors"))


def our_encoder(config, image_size=None, cls_token=True, ln_eps=None):
    """Our encoder in the standard ViT's shape of a transformers config."""
    return ViTEncoder(image_size or config.image_size, config.patch_size, config.hidden_size,
                      config.num_hidden_layers, config.num_attention_heads,
                      config.intermediate_size / config.hidden_size, stem="patch", pos="learned",
                      cls_token=cls_token, ln_eps=config.layer_norm_eps if ln_eps is None else ln_eps).eval()


def images(size, n=2, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hf_features(model, x, interpolate=False):
    """HF's patch features: last_hidden_state (after its final layer norm) without the class token. HF's image
    processor normalises with mean = std = 0.5, i.e. pixels * 2 - 1, which our encoder does to images in [0, 1]."""
    with torch.no_grad():
        return model(pixel_values=x * 2 - 1, interpolate_pos_encoding=interpolate).last_hidden_state[:, 1:]


def features(encoder, x):
    with torch.no_grad():
        return encoder(x)


def to_timm(hf_state, depth):
    """transformers ViTModel names -> timm VisionTransformer names (q, k, v fused into qkv)."""
    sd = {"patch_embed.proj.weight": hf_state["embeddings.patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": hf_state["embeddings.patch_embeddings.projection.bias"],
          "pos_embed": hf_state["embeddings.position_embeddings"], "cls_token": hf_state["embeddings.cls_token"],
          "norm.weight": hf_state["layernorm.weight"], "norm.bias": hf_state["layernorm.bias"],
          "head.weight": torch.randn(10, hf_state["layernorm.weight"].shape[0]), "head.bias": torch.zeros(10)}
    for i in range(depth):
        h, t = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            sd[f"{t}attn.qkv.{part}"] = torch.cat([hf_state[f"{h}attention.attention.{n}.{part}"]
                                                   for n in ("query", "key", "value")])
            for theirs, ours in (("layernorm_before", "norm1"), ("attention.output.dense", "attn.proj"),
                                 ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                                 ("output.dense", "mlp.fc2")):
                sd[f"{t}{ours}.{part}"] = hf_state[f"{h}{theirs}.{part}"]
    return {k: v.clone() for k, v in sd.items()}


def to_npz(hf_state, depth, heads, big_vision=False):
    """transformers ViTModel names -> Flax arrays: the original ViT's (AugReg) names, or big_vision's (under params/,
    `_0` module indices, and a position embedding without the class token's row: its position folds into `cls`)."""
    a = {k: v.detach().numpy().astype(np.float32) for k, v in hf_state.items()}
    width = a["layernorm.weight"].shape[0]
    pos, cls = a["embeddings.position_embeddings"], a["embeddings.cls_token"]
    prefix, attn, ln2, mlp = ("params/", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision \
        else ("", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    out = {"embedding/kernel": a["embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": a["embeddings.patch_embeddings.projection.bias"],
           "Transformer/encoder_norm/scale": a["layernorm.weight"], "Transformer/encoder_norm/bias": a["layernorm.bias"],
           "head/kernel": np.zeros((width, 10), np.float32)}
    if big_vision:
        out.update({"pos_embedding": pos[:, 1:], "cls": cls + pos[:, :1]})
    else:
        out.update({"Transformer/posembed_input/pos_embedding": pos, "cls": cls})
    for i in range(depth):
        h, f = f"encoder.layer.{i}.", f"Transformer/encoderblock_{i}/"
        for n in ("query", "key", "value"):
            out[f"{f}{attn}/{n}/kernel"] = a[f"{h}attention.attention.{n}.weight"].T.reshape(width, heads, -1)
            out[f"{f}{attn}/{n}/bias"] = a[f"{h}attention.attention.{n}.bias"].reshape(heads, -1)
        out[f"{f}{attn}/out/kernel"] = a[f"{h}attention.output.dense.weight"].T.reshape(heads, -1, width)
        out[f"{f}{attn}/out/bias"] = a[f"{h}attention.output.dense.bias"]
        for flax, theirs in (("LayerNorm_0", "layernorm_before"), (ln2, "layernorm_after")):
            out[f"{f}{flax}/scale"], out[f"{f}{flax}/bias"] = a[f"{h}{theirs}.weight"], a[f"{h}{theirs}.bias"]
        for d, theirs in ((0, "intermediate.dense"), (1, "output.dense")):
            out[f"{f}{mlp}/Dense_{d}/kernel"] = a[f"{h}{theirs}.weight"].T
            out[f"{f}{mlp}/Dense_{d}/bias"] = a[f"{h}{theirs}.bias"]
    return {prefix + k: v for k, v in out.items()}


def test_a_transformers_vit_gives_the_same_patch_features(tmp_path):
    hf = hf_vit()
    folder = str(tmp_path / "vit")
    state = saved_state(hf, folder)
    x = images(32)
    expected = hf_features(hf, x)
    encoder = our_encoder(hf.config)
    line = load_encoder(folder, encoder)
    assert "transformers ViT layout, 2 blocks" in line and "resized" not in line
    assert features(encoder, x).shape == expected.shape == (2, 16, 32)
    torch.testing.assert_close(features(encoder, x), expected, atol=1e-5, rtol=0)
    # the weights file alone, and a folder with pytorch_model.bin instead of safetensors
    alone = our_encoder(hf.config)
    load_encoder(os.path.join(folder, "model.safetensors"), alone)
    torch.testing.assert_close(features(alone, x), expected, atol=1e-5, rtol=0)
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save(state, os.path.join(folder, "pytorch_model.bin"))
    from_bin = our_encoder(hf.config)
    load_encoder(folder, from_bin)
    torch.testing.assert_close(features(from_bin, x), expected, atol=1e-5, rtol=0)


def test_without_a_class_token_it_is_dropped_and_the_features_move(tmp_path):
    hf = hf_vit()
    state = saved_state(hf, str(tmp_path))
    encoder = our_encoder(hf.config, cls_token=False)
    line = load_encoder(str(tmp_path), encoder)
    assert "class token dropped" in line
    x = images(32)
    torch.testing.assert_close(encoder.blocks[0].attn.qkv.weight[:32],
                               state["encoder.layer.0.attention.attention.query.weight"])
    assert (features(encoder, x) - hf_features(hf, x)).abs().max() > 1e-3  # the class token took part in attention


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_timm_state_dict_gives_the_same_features(tmp_path, suffix):
    hf = hf_vit(seed=2)
    sd = to_timm(saved_state(hf, str(tmp_path / "hf")), depth=2)
    path = str(tmp_path / f"vit{suffix}")
    if suffix == ".pth":
        torch.save({"model": sd}, path)  # as timm's training script saves it
    else:
        from safetensors.torch import save_file
        save_file(sd, path)
    encoder = our_encoder(hf.config, ln_eps=1e-12)
    line = load_encoder(path, encoder)
    assert "timm layout" in line and "4 heads from model.heads" in line
    x = images(32)
    torch.testing.assert_close(features(encoder, x), hf_features(hf, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("big_vision", [False, True], ids=["augreg", "big_vision"])
def test_a_big_vision_npz_gives_the_same_features(tmp_path, big_vision):
    hf = hf_vit(seed=3)
    path = str(tmp_path / "vit.npz")
    np.savez(path, **to_npz(saved_state(hf, str(tmp_path / "hf")), depth=2, heads=4, big_vision=big_vision))
    encoder = our_encoder(hf.config, ln_eps=1e-12)
    assert "big_vision layout" in load_encoder(path, encoder)
    x = images(32)
    torch.testing.assert_close(features(encoder, x), hf_features(hf, x), atol=1e-5, rtol=0)
    wrong_heads = our_encoder(transformers.ViTConfig(**{**SMALL, "num_attention_heads": 2}))
    with pytest.raises(DataError, match=r"vit\.npz: 4 attention heads, model\.heads is 2"):
        load_encoder(path, wrong_heads)


def test_positions_are_resized_bicubically_from_a_4x4_to_an_8x8_grid(tmp_path):
    """A checkpoint for 32 px images (4x4 patches) in a 64 px model (8x8): the same features as HF's own
    interpolate_pos_encoding on 64 px images; on the same grid the table is copied exactly."""
    hf = hf_vit(seed=4)
    state = saved_state(hf, str(tmp_path))
    table = state["embeddings.position_embeddings"][0]  # (1 + 16, 32)
    same = our_encoder(hf.config)
    load_encoder(str(tmp_path), same)
    assert torch.equal(same.pos.detach(), table[1:])
    big = our_encoder(hf.config, image_size=64)
    line = load_encoder(str(tmp_path), big)
    assert "positions resized 4x4 -> 8x8 (bicubic)" in line
    assert big.pos.shape == (64, 32)
    x = images(64)
    torch.testing.assert_close(features(big, x), hf_features(hf, x, interpolate=True), atol=1e-5, rtol=0)
    # a table that ramps down the rows of the grid keeps ramping down the rows (not across: no transposition),
    # close to the ramp's values at the larger grid's cell centres (bicubic with a = -0.75 is not exactly linear)
    ramp = torch.arange(4.0)[:, None].expand(4, 4).reshape(16, 1) * torch.ones(1, 32)
    sd = to_timm(state, depth=2)
    sd["pos_embed"] = torch.cat([sd["pos_embed"][:, :1], ramp[None]], dim=1)
    torch.save(sd, tmp_path / "ramp.pt")
    load_encoder(str(tmp_path / "ramp.pt"), big)
    rows = big.pos.detach()[:, 0].reshape(8, 8)
    centres = (torch.arange(8.0) + 0.5) / 2 - 0.5  # row j of the 8x8 grid sits at row (j + 0.5) / 2 - 0.5 of the 4x4
    assert torch.all(rows[:, 1:] == rows[:, :1]) and torch.all(rows[1:, 0] > rows[:-1, 0])
    torch.testing.assert_close(rows[1:7, 0], centres[1:7], atol=0.1, rtol=0)


def test_files_that_do_not_fit_name_the_key_or_shape(tmp_path):
    hf = hf_vit()
    folder = str(tmp_path / "vit")
    state = saved_state(hf, folder)
    cases = [(our_encoder(transformers.ViTConfig(**{**SMALL, "hidden_size": 64})),
              r"'embeddings.patch_embeddings.projection.weight' has shape \(32, 3, 8, 8\): width 32, model.width is 64"),
             (our_encoder(transformers.ViTConfig(**{**SMALL, "num_hidden_layers": 3})),
              r"2 encoder blocks, model.encoder_depth is 3"),
             (our_encoder(transformers.ViTConfig(**{**SMALL, "intermediate_size": 128})),
              r"'encoder.layer.0.intermediate.dense.weight' has shape \(64, 32\), which does not fit the encoder's "
              r"blocks.0.mlp.fc1.weight \(128, 32\)"),
             (our_encoder(hf.config, ln_eps=1e-6),
              r"layer_norm_eps 1e-12 \(config.json\), model.encoder_ln_eps is 1e-06")]
    for encoder, message in cases:
        with pytest.raises(DataError, match=message):
            load_encoder(folder, encoder)
    sd = to_timm(state, depth=2)
    sd["blocks.0.ls1.gamma"] = torch.ones(32)  # layer scale: a variant our encoder has no place for
    torch.save(sd, tmp_path / "ls.pth")
    with pytest.raises(DataError, match=r"key 'blocks.0.ls1.gamma' has no place in the encoder"):
        load_encoder(str(tmp_path / "ls.pth"), our_encoder(hf.config))
    del sd["blocks.0.ls1.gamma"], sd["blocks.1.attn.qkv.bias"]
    torch.save(sd, tmp_path / "nobias.pth")
    with pytest.raises(DataError, match=r"no key 'blocks.1.attn.qkv.bias'"):
        load_encoder(str(tmp_path / "nobias.pth"), our_encoder(hf.config))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"w.txt: not a known checkpoint file"):
        load_encoder(str(tmp_path / "w.txt"), our_encoder(hf.config))


TOY = {"task": "toy_task", "data": {"image_size": 16},
       "model": {"stem": "patch", "pos": "learned", "cls_token": True, "encoder_ln_eps": 1e-12, "patch_size": 4,
                 "width": 32, "encoder_depth": 2, "decoder_depth": 1, "heads": 4, "mlp_ratio": 2.0},
       "train": {"steps": 2, "batch_size": 4, "lr": 1e-9, "warmup_steps": 0, "eval_every": 100,
                 "checkpoint_every": 1, "log_every": 1, "threads": 1}}


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, ROOT]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rewardtune", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_a_file_that_does_not_fit_ends_the_cli_with_one_line(tmp_path):
    """A patch-8 checkpoint for a patch-4 model: one line naming the file and the key, exit code 2, nothing written."""
    hf_vit().save_pretrained(str(tmp_path / "vit"))
    config = tmp_path / "toy.json"
    config.write_text(json.dumps(TOY))
    out = tmp_path / "run"
    bad = str(tmp_path / "vit")
    proc = run_cli("pretrain", str(config), "--out", str(out), "--set", f"model.init_encoder={bad}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == (f"rewardtune: error: {bad}/model.safetensors: 'embeddings.patch_embeddings.projection.weight' "
                        "has shape (32, 3, 8, 8): patch size 8, model.patch_size is 4")
    assert not out.exists()
    proc = run_cli("pretrain", str(config), "--out", str(out), "--set", f"model.init_encoder={bad}",
                   "--set", "model.stem=conv")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "rewardtune: error: config key 'model.stem': model.init_encoder loads a standard ViT, which needs "
        "model.stem=patch, got 'conv'"]


def test_a_fresh_run_starts_from_the_file_and_a_resumed_one_does_not_read_it(tmp_path):
    from rewardtune import checkpoint
    from rewardtune.train import train
    hf = hf_vit(image_size=16, patch_size=4)
    hf.save_pretrained(str(tmp_path / "vit"))
    config = from_dict({**TOY, "model": {**TOY["model"], "init_encoder": str(tmp_path / "vit")}})
    run = str(tmp_path / "run")
    threads = torch.get_num_threads()
    train(config, run, evaluate_at_end=False)
    encoder = our_encoder(hf.config)
    load_encoder(str(tmp_path / "vit"), encoder)
    saved = checkpoint.load(checkpoint.find(run), optimizer_state=False)["model"]
    for key, value in encoder.state_dict().items():  # two steps at lr 1e-9 leave the loaded weights in place
        torch.testing.assert_close(saved[f"encoder.{key}"], value, atol=1e-6, rtol=0)
    shutil.rmtree(tmp_path / "vit")  # a resumed run must not read the file again (it would stop: not found)
    train(config, run, evaluate_at_end=False)
    torch.set_num_threads(threads)
    assert checkpoint.find(run).endswith("step-2")
    with pytest.raises(ConfigError, match=r"config key 'model.init_encoder': .*vit does not exist"):
        train(config, str(tmp_path / "fresh"), evaluate_at_end=False)


class Codec:  # the model's vocabulary does not touch the encoder
    vocab_size, max_len, end_token = 5, 4, 4

    def grammar(self):
        return None


def test_every_recipe_builds_the_model_it_built_before():
    """The new options default to the encoder as it was: no new state-dict key, layer-norm eps 1e-5, so the
    checkpoints of existing runs load."""
    for name in recipe_names():
        config = resolve(name)
        model = build_model(config.model, config.data.image_size, Codec())
        keys = set(model.state_dict())
        assert not {"encoder.pos", "encoder.cls"} & keys, name
        assert all(m.eps == 1e-5 for m in model.encoder.modules() if isinstance(m, torch.nn.LayerNorm)), name
        assert math.isclose(config.model.encoder_ln_eps, 1e-5) and config.model.init_encoder == ""
