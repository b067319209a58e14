"""The `data` section of a supervised job: which dataset, where it is, how it is split.

`data.name` picks the dataset and so the task (images, sequences or text); see
trainyard.supervised.spec for the job around it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trainyard.spec import Section


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


class DatesData(_Split):
    """Date normalisation, generated from the seed: "3rd of March 1998", "03/03/98", ...
    -> "1998-03-03" (sequence to sequence). Held-out dates are never seen in training; the
    test split also writes them in `unseen_formats`, reported apart."""

    name: Literal["dates"]
    train_size: int = Field(30_000, ge=100, description="training pairs drawn")
    unseen_formats: list[str] = Field(
        ["abbrev_us", "dmy_dotted"], description="formats kept out of training and used only "
        "in the test split (see trainyard.supervised.seq2seq_data.FORMATS)")

    @model_validator(mode="after")
    def _known(self) -> "DatesData":
        from trainyard.supervised.dates import FORMATS

        unknown = [f for f in self.unseen_formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"data.unseen_formats: unknown {unknown}; one of {list(FORMATS)}")
        if len(self.unseen_formats) >= len(FORMATS) - 1:
            raise ValueError("data.unseen_formats: leave at least two formats for training")
        return self


class ParallelTextData(_Split):
    """Your parallel text: a UTF-8 file of `source<TAB>target` lines (sequence to sequence)."""

    name: Literal["parallel_text"]
    path: str = Field(..., description="the source<TAB>target file")
    tokens: Literal["chars", "words"] = Field("chars", description="characters, or "
                                               "whitespace-separated words")


DataSection = Annotated[
    DigitsData | DigitsRowsData | ImageFolderData | MnistIdxData | Cifar10Data | TableData
    | TextData | DatesData | ParallelTextData, Field(discriminator="name")]
IMAGE_DATA = ("digits", "image_folder", "mnist_idx", "cifar10")
SEQUENCE_DATA = ("digits_rows", "table")
TEXT_DATA = ("text",)
PAIR_DATA = ("dates", "parallel_text")
DATASETS = IMAGE_DATA + SEQUENCE_DATA + TEXT_DATA + PAIR_DATA
