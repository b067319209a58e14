"""The `kind: supervised` job: model, data and training sections.

`data.name` picks the dataset and so the task: images -> image classification, sequences ->
sequence classification, text -> character language modelling. `model.arch` picks the network;
the pair is checked (a ResNet needs images; an LM cannot be bidirectional).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from trainyard.spec import Checkpoint, Count, JobBase, Resources, Section, Stop
from trainyard.supervised.spec_data import (  # noqa: F401 - the data names live there
    DATASETS,
    IMAGE_DATA,
    PAIR_DATA,
    SEQUENCE_DATA,
    TEXT_DATA,
    DataSection,
    DigitsData,
)
from trainyard.supervised.spec_models import (
    GANModel,
    Seq2SeqGRUModel,
    Seq2SeqTransformerModel,
    VAEModel,
)

# --------------------------------------------------------------------------- resources, stop


class SupervisedResources(Resources):
    """Ray Train workers: one DDP rank each."""

    workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker")
    gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs per worker; > 0 trains on GPU (use_gpu)")
    placement: Literal["pack", "spread"] = Field(
        "pack", description="pack: workers share nodes where they fit (fastest all-reduce); "
        "spread: one worker per node where possible (a node lost takes fewer ranks with it)")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class SupervisedStop(Stop):
    epochs: Count = Field(20, ge=1, description="passes over the training split")
    patience: int | None = Field(
        None, ge=1, description="stop early after this many epochs without a better "
        "validation metric (None: never)")
    monitor: str = Field(
        "auto", description="validation metric for early stopping and the best model; auto: "
        "val/accuracy for classifiers, val/loss for language models, val/elbo for a VAE, "
        "val/fid for a GAN")


class SupervisedCheckpoint(Checkpoint):
    every_epochs: int = Field(1, ge=1, description="checkpoint every N epochs (and at the end)")


class SupervisedFaultTolerance(Section):
    """What happens when a Train worker dies (its process killed, its node lost) or raises."""

    max_failures: int = Field(
        3, ge=0, description="worker-group failures to recover from: Ray Train restarts every "
        "worker from the latest checkpoint (0: the first failure ends the run)")


# --------------------------------------------------------------------------- models


class ResNetModel(Section):
    """A small ResNet for 8x8 to 32x32 images: a stem, stages of residual blocks, a head."""

    arch: Literal["resnet"]
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        [32, 64], min_length=1, description="channels of each stage; each stage after the "
        "first halves the resolution")
    blocks_per_stage: int = Field(1, ge=1, description="residual blocks in each stage")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the classifier")
    norm: Literal["batch", "none"] = Field("batch", description="normalisation in the blocks")


class RNNModel(Section):
    """LSTM or GRU: a sequence classifier (last state) or a character LM (every step)."""

    arch: Literal["lstm", "gru"]
    hidden: int = Field(256, ge=1, description="hidden units per direction")
    layers: int = Field(2, ge=1, description="stacked recurrent layers")
    bidirectional: bool = Field(False, description="read both ways (classifiers only)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout between layers and before "
                           "the head")
    embed_dim: int = Field(64, ge=1, description="token embedding size (text data)")


class TransformerModel(Section):
    """Pre-norm Transformer: a causal decoder for text, an encoder classifier for sequences."""

    arch: Literal["transformer"]
    d_model: int = Field(128, ge=8, description="width of the residual stream")
    heads: int = Field(4, ge=1, description="attention heads (must divide d_model)")
    layers: int = Field(4, ge=1, description="transformer blocks")
    ff_mult: int = Field(4, ge=1, description="feed-forward width = ff_mult * d_model")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on attention and residuals")
    positions: Literal["learned", "sinusoidal"] = Field("learned", description="position "
                                                         "encoding")

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerModel:
        if self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_model ({self.d_model})")
        return self


class CustomModel(Section):
    """Your own network: `arch: module:factory` names a function that takes the data's shapes
    as keyword arguments (those it declares, of: task, in_channels, image_size, num_classes,
    feature_dim, seq_len, vocab_size) plus `options`, and returns a torch `nn.Module`."""

    arch: str = Field(..., description="module:factory, imported from the folder you run in "
                      "(or PYTHONPATH), e.g. mymodels:make_net")
    options: dict[str, Any] = Field(default_factory=dict, description="more keyword "
                                    "arguments for the factory")

    @model_validator(mode="before")
    @classmethod
    def _misspelt_builtin(cls, data: Any) -> Any:
        # `arch: resnt` lands here too: report the name alone, not the built-in model's
        # fields beside it as unknown to this section
        if isinstance(data, dict) and ":" not in str(data.get("arch", ":")):
            return {"arch": data["arch"]}
        return data

    @field_validator("arch")
    @classmethod
    def _factory(cls, arch: str, info: ValidationInfo) -> str:
        from trainyard.supervised.custom_model import EXAMPLE, check_factory

        if ":" not in arch:  # a built-in name, misspelt
            import difflib

            close = difflib.get_close_matches(arch, ARCHS, n=1)
            raise ValueError(f"unknown arch {arch!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; one of {', '.join(map(repr, ARCHS))}, or module:factory "
                             f"for your own network, e.g. {EXAMPLE}")
        return check_factory(arch, deep=bool((info.context or {}).get("user_code")))


ARCHS = ("resnet", "lstm", "gru", "transformer", "vae", "dcgan", "seq2seq_gru",
         "seq2seq_transformer")
GENERATIVE = ("vae", "dcgan")
SEQ2SEQ = ("seq2seq_gru", "seq2seq_transformer")
_TAGS = {"resnet": "resnet", "lstm": "rnn", "gru": "rnn", "transformer": "transformer",
         "vae": "vae", "dcgan": "dcgan", "seq2seq_gru": "seq2seq_gru",
         "seq2seq_transformer": "seq2seq_transformer"}


def _arch_tag(value: Any) -> str:
    """Which model section `arch` selects: a built-in one, else the user's `module:factory`
    (whose own check names what is wrong with the value)."""
    arch = value.get("arch") if isinstance(value, dict) else getattr(value, "arch", None)
    return _TAGS.get(arch, "custom") if isinstance(arch, str) else None


ModelSection = Annotated[Annotated[ResNetModel, Tag("resnet")]
                         | Annotated[RNNModel, Tag("rnn")]
                         | Annotated[TransformerModel, Tag("transformer")]
                         | Annotated[VAEModel, Tag("vae")] | Annotated[GANModel, Tag("dcgan")]
                         | Annotated[Seq2SeqGRUModel, Tag("seq2seq_gru")]
                         | Annotated[Seq2SeqTransformerModel, Tag("seq2seq_transformer")]
                         | Annotated[CustomModel, Tag("custom")],
                         # (no arch at all: reported as the missing `arch`, like the others)
                         Discriminator(_arch_tag, custom_error_type="union_tag_not_found",
                                       custom_error_context={"discriminator": "'arch'"})]

# --------------------------------------------------------------------------- training


class TrainSection(Section):
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw | sgd (momentum)")
    lr: float = Field(3e-3, gt=0, le=10, description="peak learning rate")
    weight_decay: float = Field(5e-4, ge=0, description="decoupled weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    batch_size: int = Field(64, ge=1, description="global batch size, split over the workers")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup before the cosine decay")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm (None: off)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast on GPU; auto: bf16 where the GPU has it, else fp16; "
        "CPU always trains in fp32")
    steps_per_epoch: Count | None = Field(None, ge=1, description="cap optimizer steps per "
                                          "epoch (large datasets; None: the whole split)")


class InitFrom(Section):
    """Start from another run's model: fine-tuning or feature extraction."""

    source: str = Field(..., description="runs:/RUN_ID (a trainyard run) or the path of a "
                        "best_model folder or state.pt file")
    freeze_backbone: bool = Field(False, description="train only the head (feature extraction)")
    new_head: bool = Field(True, description="replace the classifier head (a new task)")


class Output(Section):
    """What the run leaves in MLflow besides metrics."""

    log_model: bool = Field(True, description="log the best model (MLflow pytorch flavour, "
                            "with signature and input example)")
    register_as: str | None = Field(None, description="also register it in the MLflow model "
                                    "registry under this name")
    samples: int = Field(3, ge=0, description="text samples to generate at the end (LMs)")


class GenerativeEval(Section):
    """How a generative model's samples are judged (VAE and DCGAN)."""

    feature_run: str | None = Field(
        None, description="runs:/RUN_ID of an image classifier run whose penultimate layer "
        "the FID is measured in (None: the pinned digits classifier, for 8x8 digits only)")
    samples: int = Field(1000, ge=100, description="samples the FID, class coverage and "
                         "memorisation check are measured on (FID is biased upwards below ~1,000)")
    images_every_epochs: int = Field(1, ge=1, description="log sample grids (and VAE "
                                     "reconstructions) as MLflow images every N epochs")
    iw_samples: int = Field(100, ge=1, description="VAE: importance samples of the test "
                            "log-likelihood bound")


#: per task: the validation metrics that can pick the best epoch, and which way is better
MONITORS = {"image": {"val/accuracy": "max", "val/loss": "min"},
            "sequence": {"val/accuracy": "max", "val/loss": "min"},
            "lm": {"val/loss": "min", "val/accuracy": "max"},
            "vae": {"val/elbo": "max", "val/loss": "min"},
            "gan": {"val/fid": "min"},
            "seq2seq": {"val/exact_match": "max", "val/loss": "min"}}
AUTO_MONITOR = {"image": "val/accuracy", "sequence": "val/accuracy", "lm": "val/loss",
                "vae": "val/elbo", "gan": "val/fid", "seq2seq": "val/exact_match"}
IMAGE_SIDE = {"digits": 8, "mnist_idx": 28, "cifar10": 32}


class SupervisedJob(JobBase):
    kind: Literal["supervised"] = Field(..., description="a supervised job")
    resources: SupervisedResources = Field(default_factory=SupervisedResources)
    stop: SupervisedStop = Field(default_factory=SupervisedStop)
    checkpoint: SupervisedCheckpoint = Field(default_factory=SupervisedCheckpoint)
    fault_tolerance: SupervisedFaultTolerance = Field(default_factory=SupervisedFaultTolerance)
    data: DataSection = Field(default_factory=lambda: DigitsData(name="digits"))
    model: ModelSection = Field(default_factory=lambda: ResNetModel(arch="resnet"))
    train: TrainSection = Field(default_factory=TrainSection)
    init_from: InitFrom | None = Field(None, description="start from another run's weights")
    output: Output = Field(default_factory=Output)
    eval: GenerativeEval = Field(default_factory=GenerativeEval)

    @model_validator(mode="after")
    def _check_pairing(self) -> SupervisedJob:
        data, arch = self.data.name, self.model.arch
        if self.train.batch_size < self.resources.workers:
            raise ValueError(f"train.batch_size ({self.train.batch_size}) must be at least "
                             f"resources.workers ({self.resources.workers})")
        if self.stop.monitor != "auto" and self.stop.monitor not in MONITORS[self.task]:
            raise ValueError(f"stop.monitor {self.stop.monitor!r} is not a metric of this "
                             f"{self.task} task; one of: auto, "
                             f"{', '.join(MONITORS[self.task])}")
        if arch not in ARCHS:  # the user's network: its factory gets the data's shapes
            return self
        if arch in GENERATIVE:
            self._check_generative()
            return self
        if (arch in SEQ2SEQ) != (data in PAIR_DATA):
            if arch in SEQ2SEQ:
                raise ValueError(f"model.arch {arch} translates sequences into sequences; "
                                 f"data.name {data!r} is not pairs of them: use dates or "
                                 "parallel_text (attention over images is not supported)")
            raise ValueError(f"data.name {data!r} is source/target pairs; model.arch {arch} "
                             "cannot produce a sequence: use seq2seq_gru or "
                             "seq2seq_transformer")
        if arch == "resnet" and data not in IMAGE_DATA:
            raise ValueError(f"model.arch resnet needs image data ({', '.join(IMAGE_DATA)}); "
                             f"data.name is {data!r}: use lstm, gru or transformer")
        if arch != "resnet" and data in IMAGE_DATA:
            raise ValueError(f"model.arch {arch} reads sequences; data.name {data!r} is images: "
                             "use arch resnet, or digits_rows for the digits as sequences")
        if data in TEXT_DATA and getattr(self.model, "bidirectional", False):
            raise ValueError("model.bidirectional: a language model cannot read ahead; "
                             "set it to false for text data")
        return self

    def _check_generative(self) -> None:
        data, model = self.data.name, self.model
        if data not in IMAGE_DATA:
            raise ValueError(f"model.arch {model.arch} generates images; data.name is {data!r}:"
                             f" use one of {', '.join(IMAGE_DATA)}")
        side = IMAGE_SIDE.get(data) or self.data.image_size
        stages = max(len(getattr(model, name)) for name in
                     ("widths", "generator_widths", "discriminator_widths")
                     if hasattr(model, name))
        if side % 2 ** stages:
            raise ValueError(f"model: {stages} stride-2 stages need an image side divisible by "
                             f"{2 ** stages}; {data} images are {side}x{side}: use fewer widths")
        if model.arch == "dcgan" and self.train.grad_accum != 1:
            raise ValueError("train.grad_accum: a GAN alternates one discriminator and one "
                             "generator step per batch; set it to 1")

    @property
    def task(self) -> str:
        """image | sequence | lm | vae | gan | seq2seq"""
        if self.model.arch in GENERATIVE:
            return "vae" if self.model.arch == "vae" else "gan"
        if self.data.name in PAIR_DATA:
            return "seq2seq"
        if self.data.name in IMAGE_DATA:
            return "image"
        return "lm" if self.data.name in TEXT_DATA else "sequence"

    @property
    def monitor(self) -> tuple[str, str]:
        """(metric, 'max'|'min') that picks the best epoch and drives early stopping."""
        metric = self.stop.monitor
        if metric == "auto":
            metric = AUTO_MONITOR[self.task]
        return metric, MONITORS[self.task][metric]

    def resource_demand(self) -> dict[str, float]:
        res = self.resources
        demand = {"CPU": res.workers * res.cpus_per_worker}
        if res.gpus_per_worker:
            demand["GPU"] = res.workers * res.gpus_per_worker
        demand.update({name: res.workers * amount for name, amount in res.custom.items()})
        demand["CPU"] += self.data_cpus()
        return demand

    def input_paths(self) -> dict[str, str]:
        return {f"data.{name}": value for name in ("path", "val_path", "test_path")
                if (value := getattr(self.data, name, None))}

    def data_cpus(self) -> int:
        # Ray Data's read tasks get only the CPUs the Train workers leave: none on a full
        # machine, and a streamed epoch would then wait forever.
        return 1 if getattr(self.data, "stream", False) else 0

    def worker_bundles(self) -> list[dict[str, float]]:
        res = self.resources
        shape = {"CPU": res.cpus_per_worker, **res.custom}
        if res.gpus_per_worker:
            shape["GPU"] = res.gpus_per_worker
        return [dict(shape) for _ in range(res.workers)]

    def driver_demand(self) -> dict[str, float]:
        return {"CPU": 0}  # the Train workers hold the CPUs and GPUs; the driver only waits
