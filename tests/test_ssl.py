"""Tests for the Flax wav2vec2/HuBERT encoder and its Hugging Face checkpoint loader.

Tiny random transformers models (PyTorch, CPU) are saved locally and loaded with
`load_ssl`; the Flax forward pass must match PyTorch's within 1e-4.
"""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from msjax.convert.encoders import load_configured_encoder
from msjax.convert.hf import _convert, load_ssl
from msjax.errors import CheckpointError
from msjax.features.audio import load_audio
from msjax.models.encoder import normalize_waveform
from msjax.models.ssl import REMAT_POLICIES, SSLConfig, SSLEncoder, _span_mask
from msjax.models.vjp import grouped_conv_1d

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    conv_dim=(8, 8, 8, 8, 8, 8, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
VARIANTS = {
    "wav2vec2-group": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model, "group", False),
    "wav2vec2-layer": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model, "layer", True),
    "hubert-group": (transformers.HubertConfig, transformers.HubertModel, "group", False),
    "hubert-layer": (transformers.HubertConfig, transformers.HubertModel, "layer", True),
}
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("fast_compile")


def _torch_model(variant: str, seed: int = 0) -> torch.nn.Module:
    config_cls, model_cls, norm, stable = VARIANTS[variant]
    config = config_cls(
        **TINY, feat_extract_norm=norm, do_stable_layer_norm=stable, conv_bias=stable
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Perturb every tensor so that norms' scales/biases and the weight-norm gain (all
    # initialised to trivial values) are really checked by the parity tests.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _save(model: torch.nn.Module, path, *, normalize=True, fmt: str = "safetensors"):
    """Saves as transformers does ('safetensors'), as pytorch_model.bin ('bin'), or with
    the legacy weight_g/weight_v names ('legacy')."""
    if fmt == "safetensors":
        model.save_pretrained(path)
    else:
        model.config.save_pretrained(path)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if fmt == "bin":
            torch.save(state, path / "pytorch_model.bin")
        else:
            renamed = {
                k.replace("parametrizations.weight.original0", "weight_g").replace(
                    "parametrizations.weight.original1", "weight_v"
                ): v.numpy()
                for k, v in state.items()
            }
            assert any(k.endswith("weight_g") for k in renamed)
            safetensors.numpy.save_file(renamed, str(path / "model.safetensors"))
    if normalize is not None:
        transformers.Wav2Vec2FeatureExtractor(do_normalize=normalize).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """variant -> (torch model, checkpoint directory)."""
    out = {}
    for variant in VARIANTS:
        model = _torch_model(variant)
        out[variant] = (model, _save(model, tmp_path_factory.mktemp(variant)))
    return out


@functools.partial(jax.jit, static_argnums=0, static_argnames=("train", "output_hidden_states"))
def _encode(module, params, wav, rngs=None, *, train=False, output_hidden_states=False):
    """One compiled forward per (module, shape, flags), shared by the tests."""
    return module.apply(
        {"params": params}, wav, train=train, output_hidden_states=output_hidden_states, rngs=rngs
    )


def _torch_forward(model, wav: np.ndarray):
    with torch.no_grad():
        out = model(torch.from_numpy(wav), output_hidden_states=True)
    return out.last_hidden_state.numpy(), [h.numpy() for h in out.hidden_states]


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_pytorch(saved, variant):
    model, path = saved[variant]
    ssl = load_ssl(path)
    assert ssl.config.model_type == variant.split("-")[0]
    rng = np.random.default_rng(0)
    for n in (400, 4321):
        wav = rng.standard_normal((3, n)).astype(np.float32)
        last, hidden = _torch_forward(model, wav)
        out = _encode(ssl.module, ssl.params, wav, output_hidden_states=True)
        assert out["last_hidden_state"].shape == (3, ssl.config.num_frames(n), 32)
        assert _max_diff(out["last_hidden_state"], last) < TOL
        assert len(out["hidden_states"]) == len(hidden) == 3
        for ours, theirs in zip(out["hidden_states"], hidden):
            assert _max_diff(ours, theirs) < TOL


def _check_backward(model, ssl, path, wav: np.ndarray, rel: float) -> None:
    """Forward output and every parameter's gradient of sum(last_hidden_state * probe)
    against torch autograd, each within `rel` of max(1, its largest entry)."""
    probe = np.random.default_rng(8).standard_normal(
        (len(wav), ssl.config.num_frames(wav.shape[1]), ssl.config.hidden_size)
    ).astype(np.float32)
    model.zero_grad()
    out = model(torch.from_numpy(wav)).last_hidden_state
    (out * torch.from_numpy(probe)).sum().backward()
    torch_grads = {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
        for name, p in model.named_parameters()
    }
    expected, _ = _convert(torch_grads, ssl.module, path)

    def loss(params):
        hidden = ssl.module.apply({"params": params}, wav)["last_hidden_state"]
        return jnp.sum(hidden * probe), hidden

    grads, hidden = jax.jit(jax.grad(loss, has_aux=True))(ssl.params)
    want = out.detach().numpy()
    assert _max_diff(hidden, want) < rel * max(1.0, float(np.abs(want).max()))
    ours = flax.traverse_util.flatten_dict(grads)
    theirs = flax.traverse_util.flatten_dict(expected)
    assert ours.keys() == theirs.keys()
    assert np.abs(theirs[("encoder", "pos_conv_embed", "conv", "weight_v")]).max() > 0
    for name in ours:
        scale = max(1.0, float(np.abs(theirs[name]).max()))
        assert _max_diff(ours[name], theirs[name]) < rel * scale, name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_match_pytorch(saved, variant):
    """Backward parity for every parameter (the positional conv's own weight gradient too),
    for wav2vec2 and HuBERT, Base-style (group norm) and Large-style (layer norm, stable
    layer norm); float32 sums in different orders: 1e-4 of scale."""
    model, path = saved[variant]
    wav = np.random.default_rng(8).standard_normal((2, 4321)).astype(np.float32)
    _check_backward(model, load_ssl(path), path, wav, 1e-4)


@pytest.mark.parametrize("variant", ["wav2vec2-group", "hubert-layer"])
def test_optimised_xla_matches_pytorch_on_real_speech(saved, variant, emodb_dir):
    """Forward and backward on two EMODB clips (1 s each) with XLA's optimisations on,
    as training runs them (the other tests here compile with most of them off)."""
    clips = sorted((emodb_dir / "wav").glob("*.wav"))[:2]
    wav = np.stack([load_audio(c)[:16000] for c in clips])
    wav = np.array(normalize_waveform(wav), np.float32)  # a writable copy, for torch
    model, path = saved[variant]
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        _check_backward(model, load_ssl(path), path, wav, 1e-4)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.parametrize("kernel,groups,batch", [(16, 4, 3), (5, 2, 1), (128, 16, 2)])
def test_grouped_conv_gradient_matches_autodiff(kernel, groups, batch):
    rng = np.random.default_rng(kernel)
    dim, length = 8 * groups, 37
    pad = (kernel // 2, kernel // 2 - (1 - kernel % 2))
    x = jnp.asarray(rng.standard_normal((batch, length, dim)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, dim // groups, dim)), jnp.float32)

    def plain(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1,), (pad,), dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=groups,
        )

    y, plain_vjp = jax.vjp(plain, x, w)
    y_ours, our_vjp = jax.vjp(lambda x, w: grouped_conv_1d(x, w, pad, groups), x, w)
    np.testing.assert_array_equal(y_ours, y)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    for ours, theirs in zip(our_vjp(dy), plain_vjp(dy)):
        assert ours.shape == theirs.shape
        assert _max_diff(ours, theirs) < 1e-5 * float(jnp.abs(theirs).max())


def test_short_input_is_zero_padded(saved):
    model, path = saved["wav2vec2-group"]
    ssl = load_ssl(path)
    wav = np.random.default_rng(1).standard_normal((2, 250)).astype(np.float32)
    last, _ = _torch_forward(model, np.pad(wav, ((0, 0), (0, 150))))
    out = _encode(ssl.module, ssl.params, wav)["last_hidden_state"]
    assert out.shape == (2, 1, 32)
    assert _max_diff(out, last) < TOL


@pytest.mark.parametrize("fmt", ["bin", "legacy"])
def test_other_weight_files(tmp_path, saved, fmt):
    model, path = saved["wav2vec2-layer"]
    ssl = load_ssl(_save(model, tmp_path, fmt=fmt))
    wav = np.random.default_rng(2).standard_normal((3, 4321)).astype(np.float32)
    out = _encode(ssl.module, ssl.params, wav)["last_hidden_state"]
    assert _max_diff(out, _torch_forward(model, wav)[0]) < TOL
    # Same tensors under another file format or spelling: same cache identity.
    assert ssl.identity == load_ssl(path).identity


def test_num_frames_matches_transformers(saved):
    model, _ = saved["hubert-group"]
    config = SSLConfig.from_hf_config(model.config.to_dict())
    lengths = np.arange(400, 160_001, 37)
    expected = model._get_feat_extract_output_lengths(torch.from_numpy(lengths)).numpy()
    assert [config.num_frames(int(n)) for n in lengths] == expected.tolist()
    assert config.receptive_field == 400
    assert config.num_frames(48_000) == 149
    assert config.num_frames(10) == 1


def _edited_checkpoint(tmp_path, saved, edit):
    model, _ = saved["wav2vec2-group"]
    path = _save(model, tmp_path)
    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
    edit(tensors)
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"))
    return path


def test_strict_missing_key(tmp_path, saved):
    name = "encoder.layers.1.attention.q_proj.weight"
    path = _edited_checkpoint(tmp_path, saved, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match="missing: " + name):
        load_ssl(path)


def test_strict_unexpected_key(tmp_path, saved):
    name = "encoder.layers.0.attention.extra_proj.weight"
    extra = {name: np.zeros((2, 2), np.float32)}
    path = _edited_checkpoint(tmp_path, saved, lambda t: t.update(extra))
    with pytest.raises(CheckpointError, match="unexpected: " + name):
        load_ssl(path)


def test_strict_wrong_shape(tmp_path, saved):
    name = "feature_projection.projection.weight"
    wrong = {name: np.zeros((32, 9), np.float32)}
    path = _edited_checkpoint(tmp_path, saved, lambda t: t.update(wrong))
    with pytest.raises(CheckpointError, match="wrong shape: " + name):
        load_ssl(path)


def test_known_heads_are_ignored(tmp_path, saved):
    def add_heads(tensors):
        for key in list(tensors):
            tensors["wav2vec2." + key] = tensors.pop(key)
        tensors["project_q.weight"] = np.zeros((4, 4), np.float32)
        tensors["quantizer.codevectors"] = np.zeros((1, 4, 4), np.float32)

    assert load_ssl(_edited_checkpoint(tmp_path, saved, add_heads)).config.hidden_size == 32


def test_hub_id_offline_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="download") as err:
        load_ssl("facebook/wav2vec2-base")
    assert "facebook/wav2vec2-base" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_ssl(tmp_path / "nothing" / "here")


def test_normalization_flag(tmp_path, saved):
    model, path = saved["hubert-group"]
    assert load_ssl(path).normalize is True
    model.config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    # No preprocessor config: HuBERT Base defaults to no normalisation.
    assert load_ssl(tmp_path).normalize is False
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path)
    assert load_ssl(tmp_path).normalize is False


def test_normalize_waveform_matches_feature_extractor():
    wav = np.random.default_rng(3).standard_normal((2, 3000)).astype(np.float32) * 0.3 + 0.1
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    expected = extractor(list(wav), sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(normalize_waveform(wav), expected, atol=1e-5)


def _tiny_encoder(**overrides) -> tuple[SSLEncoder, dict]:
    config = SSLConfig(
        **TINY,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        **overrides,
    )
    module = SSLEncoder(config)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 400)))["params"]
    return module, params


def test_masking_only_in_training():
    module, params = _tiny_encoder(layerdrop=0.0, mask_time_prob=0.5, mask_time_length=3)
    wav = jnp.asarray(np.random.default_rng(4).standard_normal((2, 8000)), jnp.float32)

    def run(rng, train):
        return _encode(module, params, wav, {"mask": rng}, train=train)

    plain = run(jax.random.key(1), False)["last_hidden_state"]
    np.testing.assert_array_equal(plain, run(jax.random.key(2), False)["last_hidden_state"])
    first = run(jax.random.key(1), True)["last_hidden_state"]
    assert _max_diff(first, plain) > 1e-3
    np.testing.assert_array_equal(first, run(jax.random.key(1), True)["last_hidden_state"])
    assert _max_diff(first, run(jax.random.key(2), True)["last_hidden_state"]) > 1e-3


def test_span_mask_follows_transformers_counts():
    # length 100, p 0.05, span 10: int(0.5 + u) in {0, 1} spans, raised to min 2.
    masks = jax.jit(jax.vmap(lambda k: _span_mask(k, 4, 100, 0.05, 10, 2)))(
        jax.random.split(jax.random.key(0), 50)
    )
    counts = np.asarray(masks.sum(-1))
    assert counts.min() >= 10 and counts.max() <= 20
    # Every masked run is a whole span (>= 10 frames).
    edges = np.diff(np.pad(np.asarray(masks, np.int8), ((0, 0), (0, 0), (1, 1))), axis=-1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    assert np.all(ends[-1] - starts[-1] >= 10)
    assert not np.asarray(_span_mask(jax.random.key(0), 2, 5, 0.05, 10, 2)).any()


def test_layerdrop_only_in_training():
    wav = jnp.asarray(np.random.default_rng(5).standard_normal((2, 4000)), jnp.float32)
    module, params = _tiny_encoder(layerdrop=1.0, mask_time_prob=0.0)
    rngs = {"dropout": jax.random.key(0)}
    states = _encode(module, params, wav, rngs, train=True, output_hidden_states=True)[
        "hidden_states"
    ]
    assert all(_max_diff(s, states[0]) == 0 for s in states)  # every layer skipped
    full = _encode(module, params, wav, output_hidden_states=True)["hidden_states"]
    assert _max_diff(full[-1], full[0]) > 1e-3

    module, params = _tiny_encoder(layerdrop=0.5, mask_time_prob=0.0)

    def run(rng):
        return _encode(module, params, wav, {"dropout": rng}, train=True)

    outs = [np.asarray(run(jax.random.key(i))["last_hidden_state"]) for i in range(6)]
    np.testing.assert_array_equal(outs[0], np.asarray(run(jax.random.key(0))["last_hidden_state"]))
    assert len({o.tobytes() for o in outs}) > 1


def test_freeze_feature_encoder_stops_conv_gradients():
    wav = jnp.asarray(np.random.default_rng(6).standard_normal((2, 2000)), jnp.float32)

    def grads(freeze):
        module, params = _tiny_encoder(freeze_feature_encoder=freeze, layerdrop=0.0)
        def loss(p):
            return jnp.sum(module.apply({"params": p}, wav)["last_hidden_state"] ** 2)

        return jax.jit(jax.grad(loss))(params)

    frozen, free = grads(True), grads(False)
    def conv_norm(g):
        return sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g["feature_extractor"]))

    assert conv_norm(frozen) == 0.0
    assert conv_norm(free) > 0.0
    assert float(jnp.abs(frozen["feature_projection"]["projection"]["kernel"]).sum()) > 0.0


def test_remat_keeps_params_loss_and_gradients():
    """Rematerialised layers, each policy: the same parameter tree, and the same loss and
    gradients as the plain encoder in a training step with every source of randomness on
    (dropouts, LayerDrop, time masking), so a replayed rng that differed would show."""
    config = SSLConfig(
        **TINY, layerdrop=0.3, mask_time_prob=0.3, mask_time_length=2, freeze_feature_encoder=True,
    )
    wav = jnp.asarray(np.random.default_rng(7).standard_normal((2, 2000)), jnp.float32)
    plain = SSLEncoder(config)
    params = jax.jit(plain.init)(jax.random.key(0), wav[:, :400])["params"]
    rngs = {"dropout": jax.random.key(1), "mask": jax.random.key(2)}

    def loss_and_grads(module):
        def loss(p):
            out = module.apply({"params": p}, wav, train=True, rngs=rngs)["last_hidden_state"]
            return jnp.mean(jnp.sin(3.0 * out))

        # jax.checkpoint's primitive is in the program exactly when remat is on.
        remat = " remat2[" in str(jax.make_jaxpr(loss)(params))
        assert remat == (module.remat_policy is not None)
        return jax.jit(jax.value_and_grad(loss))(params)

    want_loss, want = loss_and_grads(plain)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(want["encoder"]["layers"]))
    for policy in REMAT_POLICIES:
        module = plain.clone(remat_policy=policy)
        shapes = jax.eval_shape(module.init, jax.random.key(0), wav[:, :400])["params"]
        assert jax.tree.structure(shapes) == jax.tree.structure(params)
        got_loss, got = loss_and_grads(module)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6, err_msg=policy)
        for path, g in jax.tree_util.tree_leaves_with_path(got):
            w = functools.reduce(lambda t, k: t[k.key], path, want)
            np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5, err_msg=f"{policy} {path}")
    with pytest.raises(ValueError, match="remat_policy"):
        plain.clone(remat_policy="everything")


def test_run_config_turns_remat_on_for_finetuning_only():
    from msjax.configs import default

    config = default.get_config()
    config.ssl.name = "random:tiny"
    assert load_configured_encoder(config.ssl).module.remat_policy is None
    config.ssl.remat, config.ssl.remat_policy = True, "dots_saveable"
    assert load_configured_encoder(config.ssl).module.remat_policy is None  # frozen features
    config.ssl.finetune = True
    encoder = load_configured_encoder(config.ssl)
    assert encoder.module.remat_policy == "dots_saveable"
    assert encoder.config.layerdrop == config.ssl.layerdrop
    del config.ssl.remat  # a config saved before the field
    assert load_configured_encoder(config.ssl).module.remat_policy is None


def test_bfloat16_compute_keeps_float32_params(saved):
    model, path = saved["wav2vec2-group"]
    ssl = load_ssl(path, dtype=jnp.bfloat16, overrides={"layerdrop": 0.0})
    assert ssl.config.layerdrop == 0.0
    assert {x.dtype for x in jax.tree.leaves(ssl.params)} == {jnp.dtype(jnp.float32)}
    wav = np.random.default_rng(7).standard_normal((3, 4321)).astype(np.float32)
    out = _encode(ssl.module, ssl.params, wav)["last_hidden_state"]
    assert out.dtype == jnp.bfloat16
    # Post-LN outputs are O(1); bf16 keeps about 2-3 significant digits.
    assert _max_diff(out, _torch_forward(model, wav)[0]) < 0.25
    assert ssl.identity != load_ssl(path).identity


def test_config_round_trip_and_errors(saved):
    model, _ = saved["hubert-layer"]
    config = SSLConfig.from_hf_config(model.config.to_dict(), layerdrop=0.0)
    default = SSLConfig.from_hf_config(model.config.to_dict())
    assert dataclasses.replace(config, layerdrop=model.config.layerdrop) == default
    assert config.do_stable_layer_norm and config.conv_bias and config.model_type == "hubert"
    with pytest.raises(ValueError, match="adapter"):
        SSLConfig.from_hf_config({"model_type": "wav2vec2", "add_adapter": True})
