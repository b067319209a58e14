"""The `kind: supervised` job: model, data and training sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainyard.spec import Checkpoint, Count, JobBase, Resources, Section, Stop

DATASETS = ("digits",)
ARCHS = ("resnet",)


class SupervisedResources(Resources):
    """Ray Train workers: one DDP rank each."""

    workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker")
    gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs per worker; > 0 trains on GPU (use_gpu)")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class SupervisedStop(Stop):
    epochs: Count = Field(20, ge=1, description="passes over the training split")
    patience: int | None = Field(
        None, ge=1, description="stop early after this many epochs without a better "
        "validation metric (None: never)")


class SupervisedCheckpoint(Checkpoint):
    every_epochs: int = Field(1, ge=1, description="checkpoint every N epochs (and at the end)")


class ResNetModel(Section):
    """A small ResNet for 8x8 to 32x32 images: a stem, stages of residual blocks, a head."""

    arch: Literal["resnet"] = Field("resnet", description="model family")
    widths: list[int] = Field([32, 64], min_length=1,
                              description="channels of each stage; each stage after the "
                              "first halves the resolution")
    blocks_per_stage: int = Field(1, ge=1, description="residual blocks in each stage")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the classifier")
    norm: Literal["batch", "none"] = Field("batch", description="normalisation in the blocks")

    @model_validator(mode="after")
    def _check_widths(self) -> "ResNetModel":
        if any(w < 1 for w in self.widths):
            raise ValueError("widths must be positive channel counts")
        return self


class DataSection(Section):
    name: Literal[DATASETS] = Field("digits", description="dataset: " + ", ".join(DATASETS))
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share held out for validation")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="share held out for testing")
    augment: bool = Field(True, description="random shifts (pad + crop) of training images")


class TrainSection(Section):
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw | sgd (momentum)")
    lr: float = Field(3e-3, gt=0, le=10, description="peak learning rate")
    weight_decay: float = Field(5e-4, ge=0, description="decoupled weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    batch_size: int = Field(64, ge=1, description="global batch size, split over the workers")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup before the cosine decay")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm (None: off)")


class SupervisedJob(JobBase):
    kind: Literal["supervised"] = Field(..., description="a supervised job")
    resources: SupervisedResources = Field(default_factory=SupervisedResources)
    stop: SupervisedStop = Field(default_factory=SupervisedStop)
    checkpoint: SupervisedCheckpoint = Field(default_factory=SupervisedCheckpoint)
    data: DataSection = Field(default_factory=DataSection)
    model: ResNetModel = Field(default_factory=ResNetModel)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _check_batch(self) -> "SupervisedJob":
        if self.train.batch_size < self.resources.workers:
            raise ValueError(f"train.batch_size ({self.train.batch_size}) must be at least "
                             f"resources.workers ({self.resources.workers})")
        return self

    def resource_demand(self) -> dict[str, float]:
        res = self.resources
        demand = {"CPU": res.workers * res.cpus_per_worker}
        if res.gpus_per_worker:
            demand["GPU"] = res.workers * res.gpus_per_worker
        return demand
