"""MS-EmoBoost: MFCC and spectrogram guidance pooling SSL features (paper eq. 2-13).

One 3 s segment, batch B (the paper's Fig. 2; MFCC [300, 40] and
spectrogram [200, 300] from msjax.features.acoustic, the image from msjax.features.image):

    mfcc  [B, 300, 40] -> frame L2-normalise -> Bi-LSTM [B, 300, 512]
          -> residual self-attention -> flatten -> dropout -> Linear+ReLU   [B, 128]
    image [B, 256, 384, 3] -> AlexNet features -> adaptive pool [B, 6, 6, 256]
          -> 36 tokens [B, 36, 256] -> residual self-attention
          -> flatten (NCHW order) -> dropout -> Linear+ReLU                  [B, 128]
    concat [spec, mfcc] -> dropout -> Linear -> ReLU = X_enh                  [B, F]
    X'_w = X_enh . X_w   (X_w: SSL last hidden state [B, F, D])               [B, D]
    logits = Linear(dropout(X'_w))                                            [B, C]

Parameter tree (top-level names; absent ones belong to disabled parts):

    alexnet          AlexNetFeatures (features_0 ... features_10, torchvision-named)
    spec_attention   ResidualSelfAttention (query, key, value)
    spec_linear      Linear 9216 -> 128
    lstm             BiLSTM (layer_0/forward, layer_0/backward, layer_1/...)
    mfcc_attention   ResidualSelfAttention
    mfcc_linear      Linear 153600 -> 128
    enhance          Linear (128 per branch) -> F
    classifier       Linear D -> C
    encoder          the SSL encoder, only when it runs inside the model

The head's names are the same whether SSL features are given ('ssl') or computed by
an `encoder` from 'wav', so a head trained on cached features loads into either.
F and D are never fixed here: `from_configs` derives them from the segment length
and the SSL config.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.alexnet import AlexNetFeatures
from msjax.models.attention import Linear, ResidualSelfAttention
from msjax.models.bilstm import BiLSTM


def frame_l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Scales every frame to unit L2 norm over its coefficients (torch F.normalize).

    Args:
        x: [B, T, n_mfcc].
        eps: norm floor, so all-zero (padding) frames stay zero instead of NaN.

    Returns:
        [B, T, n_mfcc].
    """
    # sqrt(max(|x|^2, eps^2)) == max(|x|, eps), with a finite gradient at x = 0.
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class MSEmoBoost(nn.Module):
    """MS-EmoBoost classifier over one segment.

    Attributes:
        num_classes: C.
        ssl_frames: F, SSL frames per segment (149 for 3 s with wav2vec2/HuBERT).
        ssl_dim: D, SSL hidden size (768 Base, 1024 Large).
        use_attention: residual self-attention in both branches (paper Table 4).
        use_mfcc: MFCC guidance branch (paper Table 3).
        use_spectrogram: spectrogram guidance branch (paper Table 3).
        baseline: no guidance at all: mean-pooled SSL features -> dropout -> classifier.
        spec_tokens: how the pooled AlexNet map [6, 6, 256] becomes attention tokens:
            "spatial" (36 tokens of width 256) or "channel" (256 tokens of width 36).
        lstm_hidden: Bi-LSTM units per direction.
        lstm_dropout: dropout between the Bi-LSTM layers.
        dropout: rate of the four dropouts of the head (both branches, guidance, classifier).
        branch_dim: width of each branch's projection (128).
        lstm_unroll: Bi-LSTM scan unrolling (speed only).
        zero_init_classifier: start the classifier at zero (uniform initial logits).
            With PyTorch's random init the first updates mostly shrink the pooled
            vector toward uniform logits, which drives X_enh's ReLU to zero for every
            frame, after which nothing learns; at lr 1e-5 this drift is slow, at the
            higher rates of small runs it kills training. False gives torch's init.
        encoder: SSL encoder run inside the model on batch['wav'] (its output dict's
            'last_hidden_state' is X_w); None reads cached features from batch['ssl'].
    """

    num_classes: int
    ssl_frames: int
    ssl_dim: int
    use_attention: bool = True
    use_mfcc: bool = True
    use_spectrogram: bool = True
    baseline: bool = False
    spec_tokens: str = "spatial"
    lstm_hidden: int = 256
    lstm_dropout: float = 0.5
    dropout: float = 0.1
    branch_dim: int = 128
    lstm_unroll: int = 1
    zero_init_classifier: bool = True
    encoder: nn.Module | None = None

    @nn.compact
    def __call__(
        self, batch: Mapping[str, jax.Array], *, train: bool, return_features: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Classifies a batch of segments.

        Args:
            batch: 'mfcc' [B, 300, 40] and 'image' [B, 256, 384, 3] for the enabled
                branches, plus 'ssl' [B, F, D] (cached features) or 'wav' [B, N]
                (when an encoder is set).
            train: enables dropout (needs the 'dropout' rng; the encoder may need more).
            return_features: also return the pooled SSL vectors (for t-SNE plots).

        Returns:
            logits [B, C]; with return_features, (logits, features) where features has
            'mean_pooled' [B, D] (X_w averaged over frames) and, unless baseline,
            'enhanced' [B, D] (X'_w) and 'enhancement' [B, F] (X_enh).
        """
        x_w = self._ssl_features(batch, train)  # [B, F, D]
        features = {"mean_pooled": jnp.mean(x_w, axis=1)}
        if self.baseline:
            pooled = features["mean_pooled"]
        else:
            guidance = []
            if self.use_spectrogram:
                guidance.append(self._spectrogram_branch(batch["image"], train))
            if self.use_mfcc:
                guidance.append(self._mfcc_branch(batch["mfcc"], train))
            if not guidance:
                raise ValueError("MSEmoBoost needs use_mfcc or use_spectrogram unless baseline")
            guide = self._dropout(jnp.concatenate(guidance, axis=-1), train)
            weights = nn.relu(Linear(self.ssl_frames, name="enhance")(guide))  # [B, F]
            pooled = jnp.einsum("bf,bfd->bd", weights, x_w)  # [B, 1, F] . [B, F, D]
            features.update(enhanced=pooled, enhancement=weights)
        classifier = Linear(
            self.num_classes, zero_init=self.zero_init_classifier, name="classifier"
        )
        logits = classifier(self._dropout(pooled, train))
        return (logits, features) if return_features else logits

    def _dropout(self, x: jax.Array, train: bool) -> jax.Array:
        return nn.Dropout(self.dropout, deterministic=not train)(x)

    def _ssl_features(self, batch: Mapping[str, jax.Array], train: bool) -> jax.Array:
        """X_w [B, F, D]: cached features, or the encoder's last hidden state."""
        if self.encoder is None:
            x_w = batch["ssl"]
        else:
            x_w = self.encoder(batch["wav"], train=train)["last_hidden_state"]
        if x_w.shape[1:] != (self.ssl_frames, self.ssl_dim):
            raise ValueError(
                f"SSL features have shape {tuple(x_w.shape[1:])} per segment, the model was "
                f"built for ({self.ssl_frames}, {self.ssl_dim}); derive ssl_frames/ssl_dim "
                "with from_configs() from the same segment length and SSL config"
            )
        return x_w

    def _mfcc_branch(self, mfcc: jax.Array, train: bool) -> jax.Array:
        """[B, T, n_mfcc] -> [B, branch_dim]."""
        x = frame_l2_normalize(mfcc)
        x = BiLSTM(
            self.lstm_hidden, dropout_rate=self.lstm_dropout, unroll=self.lstm_unroll, name="lstm"
        )(x, train=train)  # [B, T, 2H]
        if self.use_attention:
            x = ResidualSelfAttention(name="mfcc_attention")(x)
        x = self._dropout(x.reshape(x.shape[0], -1), train)  # time-major flatten, as torch
        return nn.relu(Linear(self.branch_dim, name="mfcc_linear")(x))

    def _spectrogram_branch(self, image: jax.Array, train: bool) -> jax.Array:
        """[B, H, W, 3] -> [B, branch_dim]."""
        x = AlexNetFeatures(name="alexnet")(image)  # [B, 6, 6, 256]
        batch, height, width, channels = x.shape
        # "spatial": token h*6+w is the channel vector at (h, w); "channel": token c is
        # channel c's 6x6 map, row-major (CM's reshape of the NCHW map).
        tokens = x.reshape(batch, height * width, channels)
        if self.spec_tokens == "channel":
            tokens = tokens.transpose(0, 2, 1)
        elif self.spec_tokens != "spatial":
            raise ValueError(f"spec_tokens is 'spatial' or 'channel', not {self.spec_tokens!r}")
        if self.use_attention:
            tokens = ResidualSelfAttention(name="spec_attention")(tokens)
        if self.spec_tokens == "spatial":
            tokens = tokens.transpose(0, 2, 1)  # [B, C, H*W]
        # Flattened index c * 36 + h * 6 + w: PyTorch's NCHW flatten, so a ported
        # Linear(9216 -> 128) applies unchanged when attention is off.
        x = self._dropout(tokens.reshape(batch, -1), train)
        return nn.relu(Linear(self.branch_dim, name="spec_linear")(x))


def from_configs(num_classes: int, feature_cfg: Any, ssl_config: Any, **kwargs: Any) -> MSEmoBoost:
    """Builds MSEmoBoost with F and D derived from the feature and SSL configs.

    Args:
        num_classes: C.
        feature_cfg: msjax.features.acoustic.FeatureConfig (uses `segment_samples`).
        ssl_config: SSL encoder config with `num_frames(n_samples)` and `hidden_size`.
        **kwargs: other MSEmoBoost fields (use_attention, encoder, ...).

    Returns:
        The (unbound) module.
    """
    return MSEmoBoost(
        num_classes=num_classes,
        ssl_frames=int(ssl_config.num_frames(feature_cfg.segment_samples)),
        ssl_dim=int(ssl_config.hidden_size),
        **kwargs,
    )


def dummy_batch(
    model: MSEmoBoost,
    feature_cfg: Any,
    batch_size: int = 1,
    image_size: tuple[int, int] = (256, 384),
) -> dict[str, jax.Array]:
    """All-zero batch with the keys and shapes `model` reads, for `model.init`.

    Args:
        model: the module (decides 'ssl' vs 'wav' and which branches are fed).
        feature_cfg: FeatureConfig (segment_samples, segment_frames, n_mfcc).
        batch_size: B.
        image_size: spectrogram image (height, width).
    """
    batch = {}
    if model.encoder is None:
        batch["ssl"] = jnp.zeros((batch_size, model.ssl_frames, model.ssl_dim), jnp.float32)
    else:
        batch["wav"] = jnp.zeros((batch_size, feature_cfg.segment_samples), jnp.float32)
    if not model.baseline and model.use_mfcc:
        shape = (batch_size, feature_cfg.segment_frames, feature_cfg.n_mfcc)
        batch["mfcc"] = jnp.zeros(shape, jnp.float32)
    if not model.baseline and model.use_spectrogram:
        batch["image"] = jnp.zeros((batch_size, *image_size, 3), jnp.float32)
    return batch


def replace_alexnet(params: Mapping[str, Any], alexnet: Mapping[str, Any]) -> dict[str, Any]:
    """Returns `params` with its AlexNet subtree replaced by ported (ImageNet) weights.

    Args:
        params: MSEmoBoost params (the 'params' collection).
        alexnet: AlexNetFeatures params, e.g. from msjax.convert.torchvision.alexnet_params.

    Returns:
        A new params dict; unchanged when the model has no spectrogram branch.

    Raises:
        ValueError: the two AlexNet trees differ in structure or shapes.
    """
    if "alexnet" not in params:
        return dict(params)
    old = jax.tree.map(jnp.shape, params["alexnet"])
    new = jax.tree.map(jnp.shape, alexnet)
    if old != new:
        raise ValueError(f"AlexNet params do not match the model: {new} != {old}")
    out = dict(params)
    out["alexnet"] = jax.tree.map(jnp.asarray, alexnet)
    return out
