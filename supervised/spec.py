"""The `kind: supervised` job: model, data and training sections.

`data.name` picks the dataset and so the task: images -> image classification, sequences ->
sequence classification, text -> character language modelling. `model.arch` picks the network;
the pair is checked (a ResNet needs images; an LM cannot be bidirectional).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from trainyard.spec import Checkpoint, Count, JobBase, Resources, Section, Stop

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
    monitor: Literal["auto", "val/loss", "val/accuracy"] = Field(
        "auto", description="validation metric for early stopping and the best model; auto: "
        "val/accuracy for classifiers, val/loss for language models")


class SupervisedCheckpoint(Checkpoint):
    every_epochs: int = Field(1, ge=1, description="checkpoint every N epochs (and at the end)")


class SupervisedFaultTolerance(Section):
    """What happens when a Train worker dies (its process killed, its node lost) or raises."""

    max_failures: int = Field(
        3, ge=0, description="worker-group failures to recover from: Ray Train restarts every "
        "worker from the latest checkpoint (0: the first failure ends the run)")


# --------------------------------------------------------------------------- data


class _Split(Section):
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share held out for validation")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="share held out for testing "
                                 "(datasets with an official test split use it instead)")


class _Images(_Split):
    augment: bool = Field(True, description="random crop with padding of training images")
    pad: int = Field(1, ge=0, description="padding (pixels) for the random crop")
    flip: bool = Field(False, description="random horizontal flips (not for digits or text)")


class DigitsData(_Images):
    """scikit-learn's 8x8 digits (ships with the package: no download)."""

    name: Literal["digits"]
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share held out for validation")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="share held out for testing")


class DigitsRowsData(_Split):
    """The digits read row by row: a sequence of 8 steps of 8 pixels (sequence classification)."""

    name: Literal["digits_rows"]
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share held out for validation")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="share held out for testing")


class ImageFolderData(_Images):
    """root/<class name>/<image>.png|jpg: one subfolder per class."""

    name: Literal["image_folder"]
    path: str = Field(..., description="folder with one subfolder per class")
    image_size: int = Field(32, ge=4, le=512, description="images are resized to this square")
    channels: Literal[1, 3] = Field(3, description="1: grayscale, 3: RGB")


class MnistIdxData(_Images):
    """MNIST-format IDX files (train-images-idx3-ubyte, train-labels-..., t10k-...; .gz or not)."""

    name: Literal["mnist_idx"]
    path: str = Field(..., description="folder holding the four IDX files (gzipped or not)")


class Cifar10Data(_Images):
    """CIFAR-10 python batches (cifar-10-batches-py: data_batch_1..5, test_batch)."""

    name: Literal["cifar10"]
    path: str = Field(..., description="the cifar-10-batches-py folder")
    pad: int = Field(4, ge=0, description="padding (pixels) for the random crop")
    flip: bool = Field(True, description="random horizontal flips")


class TableData(_Split):
    """A CSV or Parquet file (or folder of them) read with Ray Data: feature columns + label.

    The features form a sequence (one step per column, in order) for a sequence classifier.
    """

    name: Literal["table"]
    path: str = Field(..., description="a .csv/.parquet file or a folder of them")
    format: Literal["auto", "csv", "parquet"] = Field("auto", description="auto: by suffix")
    features: list[str] = Field(..., min_length=1, description="feature columns, in order")
    label: str = Field(..., description="column holding the class label")
    stream: bool = Field(
        False, description="stream the training rows from `path` into each worker's shard "
        "through Ray Data instead of loading them in the driver (for tables larger than the "
        "driver should hold); validation and test come from val_path and test_path")
    val_path: str | None = Field(None, description="with stream: the validation table "
                                 "(loaded whole; every class appears in it or in test_path)")
    test_path: str | None = Field(None, description="with stream: the test table")

    @model_validator(mode="after")
    def _check_stream(self) -> "TableData":
        if self.stream and (self.val_path is None or self.test_path is None):
            raise ValueError("data.stream reads only the training rows from data.path: give "
                             "data.val_path and data.test_path (smaller tables with the same "
                             "columns)")
        if not self.stream and (self.val_path or self.test_path):
            raise ValueError("data.val_path/test_path are for data.stream: true; without it "
                             "val and test are cut from data.path (val_fraction, test_fraction)")
        return self


class TextData(_Split):
    """A plain-text corpus for character-level language modelling."""

    name: Literal["text"]
    source: str = Field("pydoc_topics", description="pydoc_topics (the standard library's "
                        "~465k-character help corpus) or the path of a UTF-8 text file")
    context: int = Field(128, ge=2, le=8192, description="characters per training sequence")


DataSection = Annotated[
    DigitsData | DigitsRowsData | ImageFolderData | MnistIdxData | Cifar10Data | TableData
    | TextData, Field(discriminator="name")]
IMAGE_DATA = ("digits", "image_folder", "mnist_idx", "cifar10")
SEQUENCE_DATA = ("digits_rows", "table")
TEXT_DATA = ("text",)
DATASETS = IMAGE_DATA + SEQUENCE_DATA + TEXT_DATA

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


ARCHS = ("resnet", "lstm", "gru", "transformer")
_TAGS = {"resnet": "resnet", "lstm": "rnn", "gru": "rnn", "transformer": "transformer"}


def _arch_tag(value: Any) -> str:
    """Which model section `arch` selects: a built-in one, else the user's `module:factory`
    (whose own check names what is wrong with the value)."""
    arch = value.get("arch") if isinstance(value, dict) else getattr(value, "arch", None)
    return _TAGS.get(arch, "custom") if isinstance(arch, str) else None


ModelSection = Annotated[Annotated[ResNetModel, Tag("resnet")]
                         | Annotated[RNNModel, Tag("rnn")]
                         | Annotated[TransformerModel, Tag("transformer")]
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

    @model_validator(mode="after")
    def _check_pairing(self) -> SupervisedJob:
        data, arch = self.data.name, self.model.arch
        if arch not in ARCHS:  # the user's network: its factory gets the data's shapes
            return self
        if arch == "resnet" and data not in IMAGE_DATA:
            raise ValueError(f"model.arch resnet needs image data ({', '.join(IMAGE_DATA)}); "
                             f"data.name is {data!r}: use lstm, gru or transformer")
        if arch != "resnet" and data in IMAGE_DATA:
            raise ValueError(f"model.arch {arch} reads sequences; data.name {data!r} is images: "
                             "use arch resnet, or digits_rows for the digits as sequences")
        if data in TEXT_DATA and getattr(self.model, "bidirectional", False):
            raise ValueError("model.bidirectional: a language model cannot read ahead; "
                             "set it to false for text data")
        if self.train.batch_size < self.resources.workers:
            raise ValueError(f"train.batch_size ({self.train.batch_size}) must be at least "
                             f"resources.workers ({self.resources.workers})")
        return self

    @property
    def task(self) -> str:
        """image | sequence | lm"""
        if self.data.name in IMAGE_DATA:
            return "image"
        return "lm" if self.data.name in TEXT_DATA else "sequence"

    @property
    def monitor(self) -> tuple[str, str]:
        """(metric, 'max'|'min') that picks the best epoch and drives early stopping."""
        metric = self.stop.monitor
        if metric == "auto":
            metric = "val/loss" if self.task == "lm" else "val/accuracy"
        return metric, "min" if metric.endswith("loss") else "max"

    def resource_demand(self) -> dict[str, float]:
        res = self.resources
        demand = {"CPU": res.workers * res.cpus_per_worker}
        if res.gpus_per_worker:
            demand["GPU"] = res.workers * res.gpus_per_worker
        demand.update({name: res.workers * amount for name, amount in res.custom.items()})
        demand["CPU"] += self.data_cpus()
        return demand

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
