"""The `model` sections of the generative and sequence-to-sequence networks (the classifiers'
and the user's own are in trainyard.supervised.spec, which joins them all)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trainyard.spec import Section


class VAEModel(Section):
    """A convolutional variational autoencoder: stride-2 conv encoder -> diagonal Gaussian
    latent -> its mirror-image decoder; Bernoulli pixels (dynamically binarised)."""

    arch: Literal["vae"]
    latent_dim: int = Field(16, ge=1, description="size of the Gaussian latent (2: a latent "
                            "map scattered by class is logged)")
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        [32, 64], min_length=1, description="channels of the encoder's stride-2 convs (each "
        "halves the image side; the decoder mirrors them)")
    kl_warmup_epochs: float = Field(5.0, ge=0, description="the KL term's weight rises "
                                    "linearly from 0 to 1 over these epochs (0: from the start)")


class GANModel(Section):
    """DCGAN: a transposed-conv generator and a conv discriminator, non-saturating loss, Adam
    with beta1 = 0.5 for both networks (train.optimizer does not apply)."""

    arch: Literal["dcgan"]
    noise_dim: int = Field(32, ge=1, description="size of the generator's Gaussian noise")
    generator_widths: list[Annotated[int, Field(ge=1)]] = Field(
        [128, 64], min_length=1, description="channels entering each of the generator's "
        "side-doubling transposed convs")
    discriminator_widths: list[Annotated[int, Field(ge=1)]] = Field(
        [64, 128], min_length=1, description="channels of the discriminator's stride-2 convs")
    spectral_norm: bool = Field(False, description="spectral norm on every discriminator "
                                "layer (instead of batch norm)")
    discriminator_lr: float | None = Field(None, gt=0, description="the discriminator's "
                                           "learning rate (None: train.lr)")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="sample from an "
                                    "exponential moving average of the generator's weights "
                                    "with this decay per step (e.g. 0.999; None: the "
                                    "generator itself)")
    diff_augment: bool = Field(False, description="differentiable augmentation (Zhao et al. "
                               "2020): every image the discriminator sees, real or generated, "
                               "shifted by up to 1/8 of its side and with a random quarter "
                               "cut out, in both networks' steps; for small datasets")
    r1_gamma: float = Field(0.0, ge=0, description="R1 penalty (Mescheder et al. 2018): "
                            "gamma/2 times the squared norm of the discriminator's gradient "
                            "on real images, added to its loss (0: off)")


class _Decoding(Section):
    beam_size: int = Field(1, ge=1, description="beam search width for the test metrics and "
                           "`trainyard translate` (1: greedy)")
    length_penalty: float = Field(1.0, ge=0, description="beam hypotheses are ranked by "
                                  "log-prob / length ** this (0: raw log-prob)")
    max_output_len: int = Field(64, ge=1, description="tokens decoded at most")


class Seq2SeqGRUModel(_Decoding):
    """GRU encoder-decoder: a bidirectional GRU encoder, a GRU decoder with additive
    (Bahdanau) attention, or none (the control: one summary of the source at every step)."""

    arch: Literal["seq2seq_gru"]
    attention: Literal["bahdanau", "none"] = Field("bahdanau", description="additive "
                                                   "attention over the source, or none")
    hidden: int = Field(128, ge=1, description="GRU units (the encoder has this per direction)")
    embed_dim: int = Field(64, ge=1, description="token embedding size")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on embeddings and outputs")


class Seq2SeqTransformerModel(_Decoding):
    """Transformer encoder-decoder (pre-norm; padding masked in the encoder and in
    cross-attention, causal and padding masks in the decoder)."""

    arch: Literal["seq2seq_transformer"]
    d_model: int = Field(128, ge=8, description="width of the residual stream")
    heads: int = Field(4, ge=1, description="attention heads (must divide d_model)")
    layers: int = Field(2, ge=1, description="encoder layers (and as many decoder layers)")
    ff_mult: int = Field(4, ge=1, description="feed-forward width = ff_mult * d_model")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout")

    @model_validator(mode="after")
    def _heads_divide(self) -> Seq2SeqTransformerModel:
        if self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_model ({self.d_model})")
        return self
