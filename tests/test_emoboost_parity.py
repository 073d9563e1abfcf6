"""The assembled MS-EmoBoost against an independent PyTorch MS-EmoBoost.

`TorchEmoBoost` below is the paper's model written as the reference code base writes
its classifier: torch.nn.LSTM, torchvision's AlexNet features + AdaptiveAvgPool2d,
residual self-attention, the branch linears, the concatenation [spec, mfcc], the
enhancement Linear+ReLU over F frames, its product with X_w and the classifier. It
shares no code with msjax's forward pass; msjax's parameters are copied into it by
name (`_PORT`), and the gradients of every parameter are compared after mapping
torch's back the same way.

Both sides run in float64 (torch, and JAX under `jax.enable_x64`), except what msjax
keeps in float32 by design (the Bi-LSTM's state and gates, the adaptive pooling's
averaging weights): logits and every gradient agree to 1e-6 of their scale plus
1e-10 (for gradients near zero), where a wiring mistake moves them by order 1e-1.
The fine-tune test runs the transformers encoder inside the torch model and msjax's
encoder (ported from it) inside msjax's, in float32 as the encoder's own parity
tests do (1e-4 of scale). A training-mode case hands the torch reference the dropout
masks msjax drew, each at the place it belongs (`DROPOUTS`), so the places and rates of
the dropouts are compared too.

Shapes are small: 2 segments of 12 MFCC frames, a 96x128 image (a 2x3 AlexNet map,
so the adaptive pooling's 6x6 cells differ and the flatten orders are really
tested), 5 SSL frames of width 8, a Bi-LSTM of 8 units.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
import transformers
from torch import nn
from torch.nn import functional as F

from msjax import inference
from msjax.convert.hf import _convert
from msjax.models.emoboost import MSEmoBoost
from msjax.models.ssl import SSLConfig, SSLEncoder

B, FRAMES, N_MFCC, IMAGE, SSL_FRAMES, SSL_DIM, CLASSES, HIDDEN = 2, 12, 40, (96, 128), 5, 8, 4, 8
TOL64 = 1e-6
TOL32 = 1e-4
ENCODER_GRAD_TOL = 2e-5

VARIANTS = {
    "full": {},
    "no_attention": dict(use_attention=False),
    "no_mfcc": dict(use_mfcc=False),
    "no_spectrogram": dict(use_spectrogram=False),
    "baseline": dict(baseline=True),
    "spec_tokens_channel": dict(spec_tokens="channel"),
}


class TorchAttention(nn.Module):
    """X + softmax(Q K^T / sqrt(d)) V (paper eq. 4-10), one head."""

    def __init__(self, width: int):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))

    def forward(self, x):
        scores = torch.bmm(self.query(x), self.key(x).transpose(1, 2)) / x.shape[-1] ** 0.5
        return x + torch.bmm(torch.softmax(scores, dim=-1), self.value(x))


class TorchEmoBoost(nn.Module):
    """MS-EmoBoost over one segment; inputs spec [B, 3, H, W], mfcc [B, T, 40], X_w [B, F, D].

    The two-layer Bi-LSTM is written as torch.nn.LSTM(num_layers=2, dropout=0.5) defines
    it: two one-layer Bi-LSTMs with dropout on the first one's output. Every dropout
    applies a keep mask given by name to `forward` (`masks`), so a training pass can
    use the masks msjax drew; without masks there is no dropout (eval).
    """

    def __init__(self, frames, ssl_frames, ssl_dim, classes, hidden, *, use_attention=True,
                 use_mfcc=True, use_spectrogram=True, baseline=False, spec_tokens="spatial",
                 encoder=None):
        super().__init__()
        self.use_attention, self.use_mfcc, self.use_spectrogram = (
            use_attention, use_mfcc, use_spectrogram
        )
        self.baseline, self.spec_tokens, self.encoder = baseline, spec_tokens, encoder
        if use_spectrogram and not baseline:
            self.alexnet = torchvision.models.alexnet().features
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            if use_attention:
                self.spec_att = TorchAttention(256 if spec_tokens == "spatial" else 36)
            self.post_spec_layer = nn.Linear(9216, 128)
        if use_mfcc and not baseline:
            self.lstm_mfcc = nn.ModuleList(
                nn.LSTM(width, hidden, batch_first=True, bidirectional=True)
                for width in (N_MFCC, 2 * hidden)
            )
            if use_attention:
                self.mfcc_att = TorchAttention(2 * hidden)
            self.post_mfcc_layer = nn.Linear(frames * 2 * hidden, 128)
        branches = 128 * (use_mfcc + use_spectrogram)
        if not baseline:
            self.post_spec_mfcc_att_layer = nn.Linear(branches, ssl_frames)
        self.classifier = nn.Linear(ssl_dim, classes)

    def forward(self, audio_spec, audio_mfcc, audio_wav, masks=None):
        self.masks = None if masks is None else dict(masks)
        logits = self._forward(audio_spec, audio_mfcc, audio_wav)
        assert not self.masks, f"masks that no dropout used: {sorted(self.masks)}"
        return logits

    def _dropout(self, name, x, rate):
        if self.masks is None:
            return x
        keep = self.masks.pop(name)
        assert keep.shape == x.shape, (name, keep.shape, x.shape)
        return x * keep.to(x.dtype) / (1 - rate)

    def _forward(self, audio_spec, audio_mfcc, audio_wav):
        if self.encoder is not None:
            audio_wav = self.encoder(audio_wav).last_hidden_state  # [B, F, D]
        if self.baseline:
            pooled = audio_wav.mean(dim=1)
        else:
            guides = []
            if self.use_spectrogram:
                spec = self.avgpool(self.alexnet(audio_spec))  # [B, 256, 6, 6]
                spec = spec.reshape(spec.shape[0], 256, 36)  # channel tokens
                if self.use_attention:
                    if self.spec_tokens == "spatial":
                        spec = self.spec_att(spec.transpose(1, 2)).transpose(1, 2)
                    else:
                        spec = self.spec_att(spec)
                spec = self._dropout("post_spec_dropout", torch.flatten(spec, 1), 0.1)
                guides.append(F.relu(self.post_spec_layer(spec)))
            if self.use_mfcc:
                mfcc, _ = self.lstm_mfcc[0](F.normalize(audio_mfcc, p=2, dim=2))  # [B, T, 2H]
                mfcc, _ = self.lstm_mfcc[1](self._dropout("lstm_dropout", mfcc, 0.5))
                if self.use_attention:
                    mfcc = self.mfcc_att(mfcc)
                mfcc = self._dropout("post_mfcc_dropout", torch.flatten(mfcc, 1), 0.1)
                guides.append(F.relu(self.post_mfcc_layer(mfcc)))
            guide = self._dropout("post_spec_mfcc_att_dropout", torch.cat(guides, dim=-1), 0.1)
            weights = F.relu(self.post_spec_mfcc_att_layer(guide))  # [B, F]
            pooled = torch.matmul(weights.unsqueeze(1), audio_wav).squeeze(1)  # [B, D]
        return self.classifier(self._dropout("post_wav_dropout", pooled, 0.1))


ZERO = "zero"  # the torch parameter is set to zero (LSTM bias_hh)


def _linear(name):
    return [(f"{name}.weight", "kernel", (1, 0)), (f"{name}.bias", "bias", None)]


def _port_table(model: MSEmoBoost) -> dict[tuple[str, ...], list]:
    """msjax module path -> [(torch parameter, msjax leaf, layout), ...].

    The layout is the axis permutation from msjax's array to torch's (None: same),
    so torch's gradient maps back by the inverse permutation.
    The LSTM's two torch biases are one in msjax: the ported value goes to bias_ih,
    bias_hh is zero, and both get the msjax bias's gradient.
    """
    table = {("classifier",): _linear("classifier")}
    if model.baseline:
        return table
    table[("enhance",)] = _linear("post_spec_mfcc_att_layer")
    if model.use_spectrogram:
        for i in (0, 3, 6, 8, 10):
            table[("alexnet", f"features_{i}")] = [
                (f"alexnet.{i}.weight", "kernel", (3, 2, 0, 1)),
                (f"alexnet.{i}.bias", "bias", None),
            ]
        table[("spec_linear",)] = _linear("post_spec_layer")
        if model.use_attention:
            for part in ("query", "key", "value"):
                table[("spec_attention", part)] = _linear(f"spec_att.{part}")
    if model.use_mfcc:
        for k in range(2):
            for direction, suffix in (("forward", ""), ("backward", "_reverse")):
                table[("lstm", f"layer_{k}", direction)] = [
                    (f"lstm_mfcc.{k}.weight_ih_l0{suffix}", "input_kernel", (1, 0)),
                    (f"lstm_mfcc.{k}.weight_hh_l0{suffix}", "hidden_kernel", (1, 0)),
                    (f"lstm_mfcc.{k}.bias_ih_l0{suffix}", "bias", None),
                    (f"lstm_mfcc.{k}.bias_hh_l0{suffix}", "bias", ZERO),
                ]
        table[("mfcc_linear",)] = _linear("post_mfcc_layer")
        if model.use_attention:
            for part in ("query", "key", "value"):
                table[("mfcc_attention", part)] = _linear(f"mfcc_att.{part}")
    return table


def _port_into(torch_model: nn.Module, model: MSEmoBoost, params: dict) -> None:
    """Copies msjax's head parameters into `torch_model`; every one of them is used once."""
    named = dict(torch_model.named_parameters())
    flat = flax.traverse_util.flatten_dict(dict(params))
    used = set()
    with torch.no_grad():
        for path, entries in _port_table(model).items():
            for torch_name, leaf, layout in entries:
                value = np.asarray(flat[path + (leaf,)])
                if layout == ZERO:
                    value = np.zeros_like(value)
                elif layout is not None:
                    value = value.transpose(layout)
                named[torch_name].copy_(torch.from_numpy(np.array(value)))  # writable copy
                used.add(path + (leaf,))
    head = {p for p in flat if p[0] != "encoder"}
    assert used == head, sorted(map(str, head - used))
    head_torch = {n for n in named if not n.startswith("encoder.")}
    ported = {name for entries in _port_table(model).values() for name, *_ in entries}
    assert ported == head_torch, sorted(head_torch - ported)


def _torch_head_grads(torch_model: nn.Module, model: MSEmoBoost) -> dict:
    """torch's gradients in msjax's layout: {(path..., leaf): [array, ...]}."""
    named = dict(torch_model.named_parameters())
    out = {}
    for path, entries in _port_table(model).items():
        for torch_name, leaf, layout in entries:
            grad = named[torch_name].grad.numpy()
            if layout not in (None, ZERO):
                grad = grad.transpose(np.argsort(layout))
            out.setdefault(path + (leaf,), []).append(grad)
    return out


def _inputs(seed: int = 0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {
        "mfcc": rng.standard_normal((B, FRAMES, N_MFCC)).astype(dtype),
        "image": rng.standard_normal((B, *IMAGE, 3)).astype(dtype),
        "ssl": rng.standard_normal((B, SSL_FRAMES, SSL_DIM)).astype(dtype),
        "probe": rng.standard_normal((B, CLASSES)).astype(dtype),
    }


def _msjax_model(**kwargs) -> MSEmoBoost:
    # torch's random classifier init: a zero classifier would zero every other gradient.
    return MSEmoBoost(
        num_classes=CLASSES, ssl_frames=SSL_FRAMES, ssl_dim=SSL_DIM, lstm_hidden=HIDDEN,
        zero_init_classifier=False, **kwargs,
    )


def _torch_model(model: MSEmoBoost, encoder=None) -> TorchEmoBoost:
    return TorchEmoBoost(
        FRAMES, SSL_FRAMES, SSL_DIM, CLASSES, HIDDEN, use_attention=model.use_attention,
        use_mfcc=model.use_mfcc, use_spectrogram=model.use_spectrogram,
        baseline=model.baseline, spec_tokens=model.spec_tokens, encoder=encoder,
    ).eval()


def _torch_run(torch_model, x, wav_key, masks=None):
    """Logits and backward of sum(logits * probe); inputs as torch tensors (NCHW image),
    dropout keep masks by name (none: eval)."""
    torch_model.zero_grad()
    logits = torch_model(
        torch.from_numpy(x["image"].transpose(0, 3, 1, 2).copy()),
        torch.from_numpy(x["mfcc"]),
        torch.from_numpy(x[wav_key]),
        masks=masks,
    )
    (logits * torch.from_numpy(x["probe"])).sum().backward()
    return logits.detach().numpy()


def _msjax_run(model, params, x, dropout_rng=None):
    """Gradients of sum(logits * probe) and logits; training with `dropout_rng` if given."""
    batch = {k: v for k, v in x.items() if k != "probe"}
    train = dropout_rng is not None
    rngs = {"dropout": dropout_rng} if train else {}

    def loss(params):
        logits = model.apply({"params": params}, batch, train=train, rngs=rngs)
        return jnp.sum(logits * x["probe"]), logits

    return jax.jit(jax.grad(loss, has_aux=True))(params)


def _msjax_dropout_masks(model, params, x, dropout_rng) -> dict[tuple[str, ...], np.ndarray]:
    """The keep masks msjax's dropouts draw in a training pass with `dropout_rng`, by the
    Dropout module's path: the pass is rerun with each Dropout fed ones, which draws the
    same masks (one rng per module and call) and turns each into 1 / keep_prob or 0."""
    batch = {k: v for k, v in x.items() if k != "probe"}

    def run(params):
        masks = {}

        def record(next_fun, args, kwargs, context):
            if not isinstance(context.module, flax.linen.Dropout):
                return next_fun(*args, **kwargs)
            inputs, *rest = args
            scaled = next_fun(jnp.ones_like(inputs), *rest, **kwargs)
            masks[context.module.path] = scaled != 0
            return inputs * scaled

        with flax.linen.intercept_methods(record):
            model.apply({"params": params}, batch, train=True, rngs={"dropout": dropout_rng})
        return masks

    return jax.tree.map(np.asarray, jax.jit(run)(params))


def _assert_close(name, got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= tol * scale + 1e-10, (name, err, scale)


def _check_head_grads(model, grads, torch_model, tol, key_bias_scale):
    want = _torch_head_grads(torch_model, model)
    got = flax.traverse_util.flatten_dict({k: v for k, v in grads.items() if k != "encoder"})
    assert got.keys() == want.keys()
    for name, expected in want.items():
        assert len(expected) in (1, 2)
        for e in expected:
            if name[-2:] == ("key", "bias"):
                # Exactly zero (softmax ignores a per-query constant): held to the
                # key kernel's scale instead of its own rounding noise.
                scale = np.abs(want[name[:-1] + ("kernel",)][0]).max()
                assert np.abs(np.asarray(got[name]) - e).max() <= key_bias_scale * scale, name
            else:
                assert np.abs(e).max() > 0, name  # the test would be vacuous otherwise
                _assert_close("/".join(name), got[name], e, tol)


def _head_pair(model: MSEmoBoost, x: dict) -> tuple[dict, TorchEmoBoost]:
    """msjax's float64 head parameters for cached SSL features, and the torch reference
    holding them (call under `jax.enable_x64`)."""
    batch = {k: jnp.asarray(v, jnp.float32) for k, v in x.items() if k != "probe"}
    params = model.init(jax.random.key(1), batch, train=False)["params"]
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    torch.manual_seed(0)
    torch_model = _torch_model(model).double()
    _port_into(torch_model, model, params)
    return params, torch_model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_head_matches_torch_reference(variant):
    """Logits and every parameter's gradient, cached SSL features, float64."""
    model = _msjax_model(**VARIANTS[variant])
    x = _inputs()
    with jax.enable_x64():
        params, torch_model = _head_pair(model, x)
        want = _torch_run(torch_model, x, "ssl")
        grads, logits = _msjax_run(model, params, x)
        assert logits.dtype == jnp.float64
    _assert_close("logits", logits, want, TOL64)
    _check_head_grads(model, grads, torch_model, TOL64, TOL64)


# Each dropout of the torch reference -> the msjax Dropout at the same place (its module
# path) and the axis permutation from its mask to torch's layout.
DROPOUTS = {
    "post_spec_dropout": (("Dropout_0",), None),
    "lstm_dropout": (("lstm", "Dropout_0"), (1, 0, 2)),  # msjax's stack runs time-major
    "post_mfcc_dropout": (("Dropout_1",), None),
    "post_spec_mfcc_att_dropout": (("Dropout_2",), None),
    "post_wav_dropout": (("Dropout_3",), None),
}


def test_head_trains_with_torch_reference_dropout():
    """Training mode, full model: each torch dropout applies the keep mask msjax's dropout
    at the same place drew, so the dropout places and rates are compared through the
    logits and every parameter's gradient, float64."""
    model = _msjax_model()
    x = _inputs()
    rng = jax.random.key(7)
    with jax.enable_x64():
        params, torch_model = _head_pair(model, x)
        drawn = _msjax_dropout_masks(model, params, x, rng)
        assert set(drawn) == {path for path, _ in DROPOUTS.values()}
        masks = {}
        for name, (path, layout) in DROPOUTS.items():
            keep = drawn[path] if layout is None else drawn[path].transpose(layout)
            assert 0 < keep.mean() < 1, name  # drops some, keeps some
            masks[name] = torch.from_numpy(np.array(keep))  # writable copy
        want = _torch_run(torch_model, x, "ssl", masks)
        grads, logits = _msjax_run(model, params, x, rng)
    _assert_close("logits", logits, want, TOL64)
    _check_head_grads(model, grads, torch_model, TOL64, TOL64)


TINY_ENCODER = dict(
    hidden_size=SSL_DIM, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
    conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
)
WAV_SAMPLES = 1680  # 5 frames from wav2vec2's conv stack


def test_finetune_matches_torch_reference(tmp_path):
    """The encoder inside the model: transformers' Wav2Vec2Model inside the torch
    reference, msjax's encoder (ported from it) inside MSEmoBoost; logits and every head
    gradient to 1e-4 of scale, every encoder gradient to 2e-5 of its own scale, float32."""
    torch.manual_seed(0)
    hf = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**TINY_ENCODER)).eval()
    with torch.no_grad():  # off the trivial init values (norm scales, weight-norm gain)
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    config = SSLConfig(**{k: v for k, v in TINY_ENCODER.items() if k != "feat_proj_dropout"})
    assert config.num_frames(WAV_SAMPLES) == SSL_FRAMES
    module = SSLEncoder(config)
    encoder_params, _ = _convert(
        {k: v.numpy() for k, v in hf.state_dict().items()}, module, tmp_path
    )
    model = _msjax_model(encoder=module)
    x = _inputs(3, np.float32)
    x["wav"] = np.random.default_rng(4).standard_normal((B, WAV_SAMPLES)).astype(np.float32)
    del x["ssl"]
    batch = {k: v for k, v in x.items() if k != "probe"}
    params = dict(model.init(jax.random.key(1), batch, train=False)["params"])
    params["encoder"] = encoder_params
    torch_model = _torch_model(model, encoder=hf)
    _port_into(torch_model, model, params)
    want = _torch_run(torch_model, x, "wav")
    grads, logits = _msjax_run(model, params, x)
    _assert_close("logits", logits, want, TOL32)
    _check_head_grads(model, grads, torch_model, TOL32, TOL32)
    torch_grads = {
        n[len("encoder."):]: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
        for n, p in torch_model.named_parameters() if n.startswith("encoder.")
    }
    expected, _ = _convert(torch_grads, module, tmp_path)
    got = flax.traverse_util.flatten_dict(grads["encoder"])
    expected = flax.traverse_util.flatten_dict(expected)
    assert got.keys() == expected.keys()
    for name in got:
        # Relative to each parameter's own scale (down to 1e-3 for q/k): correct code is
        # within 4e-6 of scale; the floor holds the key biases' exactly-zero gradients
        # (torch's rounding noise, 2e-10).
        scale = float(np.abs(expected[name]).max())
        err = float(np.abs(np.asarray(got[name]) - expected[name]).max())
        assert err <= ENCODER_GRAD_TOL * scale + 1e-8, ("/".join(name), err, scale)


def test_utterance_pooling_is_mean_segment_log_softmax():
    """Segments of three utterances, interleaved: msjax.results.metrics against a direct sum."""
    logits = np.random.default_rng(5).standard_normal((6, CLASSES)) * 3
    uids = ["b", "a", "b", "c", "a", "b"]
    got_ids, got = inference.utterance_predictions(np.asarray(jax.nn.log_softmax(logits)), uids)
    assert list(got_ids) == ["b", "a", "c"]
    for i, uid in enumerate(got_ids):
        rows = [r for r, u in enumerate(uids) if u == uid]
        want = sum(
            torch.log_softmax(torch.from_numpy(logits[r]), dim=-1).numpy() for r in rows
        ) / len(rows)
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)
