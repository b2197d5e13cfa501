"""Embedding extraction: a dataset of person crops -> ``(N, D)`` float32 embeddings, in order.

Two pieces:

* :func:`embedding_dataloader` turns a ``datasets.Dataset`` with a lazily decoded ``image``
  column into a ``torch.utils.data.DataLoader`` whose batches are
  ``{"pixel_values": (B, 3, H, W) float32, "index": (B,) int64 row numbers}``. Decoding and
  preprocessing happen in the loader's workers (in its ``collate_fn``), so
  ``num_workers > 0`` moves all image work off the main process.
* :func:`extract_embeddings` runs a re-ID model over such a loader (building it from a
  dataset if needed) in eval mode under ``torch.inference_mode``, optionally averaging each
  image's embedding with its horizontal mirror's, optionally under autocast, and optionally
  sharded across the processes of an ``accelerate.Accelerator``. The result is always in
  dataset order: rows are placed by their ``index``, and every row number must occur
  exactly once. With ``skip_unreadable`` an image that cannot be read is logged and its
  row left NaN instead of ending the run (and losing the batches already embedded).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..utils import check_int

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["AUTOCAST_DTYPES", "ImageProcessor", "embedding_dataloader", "extract_embeddings"]

logger = logging.getLogger(__name__)

ImageProcessor = Callable[..., Mapping[str, Any]]
"""An image processor: ``processor(list_of_pil_images, return_tensors="pt")`` returns a
mapping with ``pixel_values`` of shape ``(B, 3, H, W)`` (every ``ReIDImageProcessor`` and
transformers image processor qualifies)."""

#: Dtypes accepted for ``extract_embeddings(dtype=...)`` (autocast compute dtypes).
AUTOCAST_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)

_IMAGE_COLUMN = "image"
_PATH_COLUMN = "path"
# Row numbers listed in an ordering error; a broken loader could otherwise print millions.
_MAX_LISTED_ROWS = 10
# Pillow signals undecodable files through all of these (SyntaxError for bad PNG chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)
_SKIP_HINT = "skip_unreadable=True (--skip-unreadable on the command line) leaves such images out"
# Size of the blank image that stands in for unreadable ones in an all-unreadable batch.
_STAND_IN_SIZE = (64, 128)


class _DecodeAndPreprocess:
    """``collate_fn`` of :func:`embedding_dataloader`: row numbers -> a preprocessed batch.

    It runs inside the DataLoader workers, so it must be picklable: it holds the dataset
    (Arrow tables pickle by reference to their memory-mapped files, or by value when in
    memory) and the processor, both picklable.

    With ``skip_unreadable`` an image that cannot be decoded or preprocessed does not end
    the run: a readable image of the batch (or a blank one) stands in for it, so every
    batch keeps its size (which the per-batch gathers of a distributed run need), its
    ``readable`` entry is False, and the reason goes back in ``problems`` for the main
    process to log.
    """

    def __init__(
        self, dataset: Dataset, processor: ImageProcessor, skip_unreadable: bool = False
    ) -> None:
        feature = dataset.features[_IMAGE_COLUMN]
        columns = [_IMAGE_COLUMN]
        if _PATH_COLUMN in dataset.column_names:
            columns.append(_PATH_COLUMN)
        # Rows are read undecoded and decoded here one by one, so that a broken file can be
        # reported with its path (datasets' own decoding would raise without it). The
        # decoder is a copy of the dataset's feature (same ``mode``) with decoding enabled,
        # whatever the dataset's own setting. ``with_format(None)`` drops any transform the
        # caller set: the processor is the only transform applied.
        self._rows = (
            dataset.select_columns(columns)
            .cast_column(_IMAGE_COLUMN, ImageFeature(mode=feature.mode, decode=False))
            .with_format(None)
        )
        self._decoder = ImageFeature(mode=feature.mode, decode=True)
        self._processor = processor
        self._skip_unreadable = skip_unreadable

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        rows = self._rows[indices]
        names = [
            _describe(index, value, rows[_PATH_COLUMN][i] if _PATH_COLUMN in rows else None)
            for i, (index, value) in enumerate(zip(indices, rows[_IMAGE_COLUMN], strict=True))
        ]
        problems: list[str] = []
        images = [
            self._decode(value, name, problems)
            for value, name in zip(rows[_IMAGE_COLUMN], names, strict=True)
        ]
        pixel_values = self._preprocess(images, names, problems)
        return {
            "pixel_values": pixel_values,
            "index": torch.tensor(indices, dtype=torch.int64),
            "readable": torch.tensor([image is not None for image in images], dtype=torch.bool),
            "problems": problems,
        }

    def _unreadable(
        self,
        error_type: type[Exception],
        message: str,
        cause: BaseException | None,
        problems: list[str],
    ) -> None:
        """Note an image that cannot be read: in ``problems`` when skipping such images,
        else raised as ``error_type`` with a hint on how to skip them."""
        if not self._skip_unreadable:
            raise error_type(f"{message}; {_SKIP_HINT}") from cause
        problems.append(message)

    def _decode(
        self, value: Mapping[str, Any] | None, name: str, problems: list[str]
    ) -> PIL.Image.Image | None:
        """The decoded image, or None for one that is skipped."""
        if value is None:
            message = f"{name} has no image (the image cell is empty)"
            return self._unreadable(ValueError, message, None, problems)
        try:
            return self._decoder.decode_example(dict(value))
        except FileNotFoundError as error:
            message = f"{name}: image file not found ({error})"
            return self._unreadable(FileNotFoundError, message, error, problems)
        except _DECODE_ERRORS as error:
            message = f"cannot decode {name}: {type(error).__name__}: {error}"
            return self._unreadable(ValueError, message, error, problems)

    def _preprocess(
        self, images: list[PIL.Image.Image | None], names: list[str], problems: list[str]
    ) -> torch.Tensor:
        """``pixel_values`` of the batch; images the processor refuses become None (when
        skipping) or end the run, named."""
        try:
            pixel_values = self._processor(_with_stand_ins(images), return_tensors="pt")
        except ValueError as batch_error:
            # The processor names the problem (e.g. an unsupported 16-bit PIL mode) but not
            # the file; find the images it fails on so the error can name them. Only the
            # failing path pays for this.
            refused = False
            for position, (image, name) in enumerate(zip(images, names, strict=True)):
                if image is None:
                    continue
                try:
                    self._processor(image, return_tensors="pt")
                except ValueError as error:
                    message = f"cannot preprocess {name}: {error}"
                    images[position] = self._unreadable(ValueError, message, error, problems)
                    refused = True
            if not refused:
                raise batch_error  # a problem of the batch as a whole, not of one image
            pixel_values = self._processor(_with_stand_ins(images), return_tensors="pt")
        pixel_values = torch.as_tensor(pixel_values["pixel_values"], dtype=torch.float32)
        if pixel_values.ndim != 4 or pixel_values.shape[0] != len(images):
            raise ValueError(
                f"the processor returned pixel_values of shape {tuple(pixel_values.shape)} for "
                f"{len(images)} images; expected (B, 3, H, W) with B = {len(images)}"
            )
        return pixel_values


def _with_stand_ins(images: list[PIL.Image.Image | None]) -> list[PIL.Image.Image]:
    """``images`` with every None (an unreadable image) replaced by a stand-in.

    The stand-in's embedding is dropped, so any image the processor takes will do; a
    readable image of the same batch also fits processors that need one size per batch.
    """
    readable = [image for image in images if image is not None]
    if len(readable) == len(images):
        return readable
    stand_in = readable[0] if readable else PIL.Image.new("RGB", _STAND_IN_SIZE)
    return [stand_in if image is None else image for image in images]


def _describe(index: int, value: Mapping[str, Any] | None, path: str | None) -> str:
    """How an error names a row: its ``path`` column, else the stored file path."""
    stored = value.get("path") if isinstance(value, Mapping) else None
    where = path or stored
    return (
        f"image {where!r} (dataset row {index})" if where else f"the image of dataset row {index}"
    )


def embedding_dataloader(
    dataset: Dataset,
    processor: ImageProcessor,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    skip_unreadable: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding preprocessed batches with their row numbers.

    Rows are read in dataset order (no shuffling, no dropped last batch). Each batch is
    ``{"pixel_values": (B, 3, H, W) float32 tensor, "index": (B,) int64 tensor,
    "readable": (B,) bool tensor, "problems": list of str}``, where ``index`` holds the
    dataset row numbers of the batch (what :func:`extract_embeddings` uses to put sharded,
    gathered results back in order) and ``H, W`` is the processor's output size. Images are
    decoded with the dataset's ``datasets.Image`` feature (its ``mode`` honoured; any format
    or transform set on the dataset is ignored) and preprocessed with ``processor``, both
    inside the loader's workers. ``readable`` is all True and ``problems`` empty unless
    ``skip_unreadable`` let an image through that could not be read.

    Args:
        dataset: a ``datasets.Dataset`` with an ``image`` column of type ``datasets.Image``
            (as made by ``reid_transformers.data.load_reid_dataset``); a ``path`` column, if
            present, is used to name unreadable images.
        processor: called as ``processor(list_of_pil_images, return_tensors="pt")``; must
            return a mapping with ``pixel_values`` ``(B, 3, H, W)``, e.g. a
            ``ReIDImageProcessor``.
        batch_size: images per batch, >= 1.
        num_workers: DataLoader worker processes; 0 decodes in the main process.
        skip_unreadable: instead of raising for an image that cannot be read (missing,
            undecodable, e.g. truncated, or refused by the processor, e.g. 16-bit), keep
            the batch's size with a stand-in image in its place, mark it False in
            ``readable`` and give the reason, naming the image, in ``problems``.

    Returns:
        ``torch.utils.data.DataLoader`` with ``len(loader) == ceil(len(dataset) /
        batch_size)``. Without ``skip_unreadable``, iterating it raises
        ``FileNotFoundError`` for a missing image file and ``ValueError`` for an
        undecodable or unprocessable one, naming the image's path and row.

    Raises:
        TypeError: ``dataset`` is not a ``datasets.Dataset`` (a ``DatasetDict`` must be
            indexed by split first) or ``processor`` is not callable.
        ValueError: no ``image`` column, an ``image`` column that is not a
            ``datasets.Image`` feature, an empty dataset, or a bad ``batch_size`` /
            ``num_workers``.
    """
    if not isinstance(dataset, Dataset):
        hint = " (pick a split, e.g. data['gallery'])" if isinstance(dataset, Mapping) else ""
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}{hint}")
    if _IMAGE_COLUMN not in dataset.column_names:
        raise ValueError(
            f"dataset has no {_IMAGE_COLUMN!r} column (columns: {dataset.column_names})"
        )
    feature = dataset.features[_IMAGE_COLUMN]
    if not isinstance(feature, ImageFeature):
        raise ValueError(
            f"dataset column {_IMAGE_COLUMN!r} must be a datasets.Image feature, got {feature}; "
            f"cast it with dataset.cast_column('image', datasets.Image())"
        )
    if len(dataset) == 0:
        raise ValueError("dataset is empty: there is nothing to embed")
    if not callable(processor):
        raise TypeError(f"processor must be callable, got {type(processor).__name__}")
    check_int("batch_size", batch_size, minimum=1)
    check_int("num_workers", num_workers, minimum=0)
    # The loader's own dataset is just the row numbers: the collate function fetches the
    # rows of a whole batch with one Arrow read, which is much cheaper than row by row.
    return DataLoader(
        range(len(dataset)),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=_DecodeAndPreprocess(dataset, processor, skip_unreadable),
    )


def extract_embeddings(
    model: torch.nn.Module,
    dataset_or_dataloader: Dataset | DataLoader,
    processor: ImageProcessor | None = None,
    *,
    batch_size: int = 64,
    flip: bool = False,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> np.ndarray:
    """Embed every image of a dataset with a re-ID model; rows in dataset order.

    The model is called as ``model(pixel_values=...)`` and must return an output with
    ``embeddings`` of shape ``(B, D)`` (every ``ReIDModelOutput`` does). It is put in eval
    mode for the call, and each of its submodules gets back its own previous train/eval
    mode afterwards, also when an error is raised. It is never moved: batches go to its
    device.

    Args:
        model: a re-ID model (possibly wrapped by ``accelerator.prepare``).
        dataset_or_dataloader: a ``datasets.Dataset`` (see :func:`embedding_dataloader`),
            or a DataLoader yielding mappings with ``pixel_values`` ``(B, 3, H, W)`` and
            ``index`` ``(B,)``, the row numbers within its dataset (as
            :func:`embedding_dataloader`'s loaders do).
        processor: required with a dataset, refused with a DataLoader (which already
            preprocesses).
        batch_size, num_workers: with a dataset, passed to :func:`embedding_dataloader`;
            not used with a DataLoader.
        flip: also embed each image's horizontal mirror (``pixel_values.flip(-1)``) and
            return the mean of the two embeddings. The mean is not re-normalised, so with
            unit-norm embeddings its norm is <= 1; compare with cosine similarity (or
            normalise) if that matters. Costs a second forward pass per batch (run one
            after the other, so peak memory stays that of one batch).
        device: where batches are sent; default: the device of the model's first
            parameter (CPU for a model without parameters). Not allowed with
            ``accelerator``, which sends batches to ``accelerator.device``.
        dtype: run the model under ``torch.autocast`` with this dtype (``torch.bfloat16``
            or ``torch.float16``); ``None`` runs it as it is (a model prepared by an
            accelerator with mixed precision keeps that accelerator's autocast). The result
            is float32 either way, and the flip average is taken in float32.
        accelerator: an ``accelerate.Accelerator`` to shard the work across its processes.
            The loader is wrapped with ``accelerate.data_loader.prepare_data_loader`` using
            the accelerator's device and process layout (an already prepared loader is used
            as is); ``even_batches`` is forced on, since every process must run the same
            number of batches for the per-batch gathers. Embeddings and row numbers are
            gathered with ``accelerator.gather_for_metrics``, which drops the samples
            repeated to even out the last batch. Every process returns the full ``(N, D)``
            array. Call it on every process.
        progress: show a tqdm bar over batches (only on the main process with an
            accelerator).
        skip_unreadable: with a dataset, images that cannot be read (missing, undecodable
            such as a truncated JPEG, or refused by the processor such as a 16-bit PNG) do
            not end the run and lose the work done: each is logged (a warning naming the
            file, row and reason) and its row of the result is NaN; a last warning counts
            them. Without it the first such image raises. Not used with a DataLoader,
            whose ``readable`` entries (see :func:`embedding_dataloader`) are honoured the
            same way.

    Returns:
        ``(N, D)`` float32 numpy array; row ``i`` is the embedding of dataset row ``i``.
        Every row is finite except those of skipped images, which are all NaN, so
        ``np.isnan(result).any(axis=1)`` marks exactly the skipped rows.

    Raises:
        TypeError: a wrong type for ``dataset_or_dataloader``, ``dtype`` or ``processor``.
        ValueError: a missing or refused ``processor``, ``device`` given with
            ``accelerator``, an unsupported ``dtype``, a batch without ``pixel_values`` /
            ``index`` or with bad shapes, a model output without ``(B, D)`` ``embeddings``,
            a loader that yields nothing, or row numbers that are not each of ``0..N-1``
            exactly once (``N`` = the loader's dataset size), or non-finite embeddings
            of a readable image (damaged weights, a float16 overflow). Errors of
            :func:`embedding_dataloader` (unreadable images) pass through.
    """
    if isinstance(dataset_or_dataloader, DataLoader):
        if processor is not None:
            raise ValueError(
                "processor must be None when a DataLoader is given: the loader's batches are "
                "already preprocessed (pass a datasets.Dataset to preprocess with processor)"
            )
        loader = dataset_or_dataloader
    elif isinstance(dataset_or_dataloader, Dataset):
        if processor is None:
            raise ValueError("a processor is required to embed a datasets.Dataset")
        loader = embedding_dataloader(
            dataset_or_dataloader,
            processor,
            batch_size=batch_size,
            num_workers=num_workers,
            skip_unreadable=skip_unreadable,
        )
    else:
        raise TypeError(
            f"dataset_or_dataloader must be a datasets.Dataset or a torch DataLoader, got "
            f"{type(dataset_or_dataloader).__name__}"
        )
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
        if dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"dtype must be one of {AUTOCAST_DTYPES} or None, got {dtype}")
    expected_rows = _dataset_size(loader)

    if accelerator is not None:
        if device is not None:
            raise ValueError(
                f"device={device!r} cannot be combined with accelerator: batches go to "
                f"accelerator.device"
            )
        loader = _shard(loader, accelerator)
        target = torch.device(accelerator.device)
        show_progress = progress and accelerator.is_main_process
    else:
        target = torch.device(device) if device is not None else _model_device(model)
        show_progress = progress

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    embedding_chunks: list[torch.Tensor] = []
    index_chunks: list[torch.Tensor] = []
    readable_chunks: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for batch in tqdm(
                loader,
                total=_length_or_none(loader),
                desc="Extracting embeddings",
                unit="batch",
                disable=not show_progress,
            ):
                pixel_values, index, readable = _unpack(batch)
                for problem in batch.get("problems", ()):
                    logger.warning("skipped an unreadable image: %s", problem)
                pixel_values = pixel_values.to(target, non_blocking=True)
                embeddings = _embed(model, pixel_values, dtype)
                if flip:
                    mirrored = _embed(model, pixel_values.flip(-1), dtype)
                    embeddings = (embeddings + mirrored) / 2
                if accelerator is not None:
                    # The row numbers travel with the embeddings, so the order of the
                    # gathered rows does not matter: they are put in place by index below.
                    # (uint8: not every collective backend gathers bool tensors.)
                    embeddings, index, readable = accelerator.gather_for_metrics(
                        (embeddings, index.to(target), readable.to(target, torch.uint8))
                    )
                embedding_chunks.append(embeddings.cpu())
                index_chunks.append(index.cpu())
                readable_chunks.append(readable.cpu().bool())
    finally:
        for module, training in modes:
            module.training = training

    if not embedding_chunks:
        raise ValueError("the DataLoader yielded no batches: there is nothing to embed")
    index = torch.cat(index_chunks).numpy()
    ordered = _in_row_order(torch.cat(embedding_chunks).numpy(), index, expected_rows)
    readable = np.empty(len(ordered), dtype=bool)
    readable[index] = torch.cat(readable_chunks).numpy()
    broken = np.flatnonzero(readable & ~np.isfinite(ordered).all(axis=1))
    if broken.size:
        more = " ..." if broken.size > _MAX_LISTED_ROWS else ""
        raise ValueError(
            f"the model returned non-finite embeddings for dataset rows "
            f"{broken[:_MAX_LISTED_ROWS].tolist()}{more} ({broken.size} of {len(ordered)}); "
            f"check the checkpoint's weights, or run without dtype=torch.float16, which can "
            f"overflow"
        )
    skipped = int((~readable).sum())
    if skipped:
        ordered[~readable] = np.nan
        logger.warning("skipped %d of %d images that could not be read", skipped, len(ordered))
    return ordered


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _dataset_size(loader: DataLoader) -> int | None:
    """Rows of the loader's dataset, or None for a dataset without a length (iterable)."""
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _length_or_none(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _shard(loader: DataLoader, accelerator: Accelerator) -> DataLoader:
    """The loader as this process's shard, on ``accelerator.device``.

    ``accelerator.prepare`` would also register the loader in the accelerator's list of
    loaders, whose sampler states ``save_state`` checkpoints: periodic evaluation would grow
    that list by one loader per call. The module-level ``prepare_data_loader`` shards the
    same way without registering.
    """
    if getattr(loader, "_is_accelerate_prepared", False):
        return loader
    from accelerate.data_loader import prepare_data_loader

    return prepare_data_loader(
        loader,
        accelerator.device,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        split_batches=False,
        put_on_device=True,
        even_batches=True,
    )


def _unpack(batch: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pixel_values``, ``index`` and ``readable`` (all True when the loader has none)."""
    if not isinstance(batch, Mapping) or "pixel_values" not in batch or "index" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(
            f"each batch must be a mapping with 'pixel_values' and 'index' (the dataset row "
            f"numbers), as embedding_dataloader yields; got {keys}"
        )
    pixel_values, index = batch["pixel_values"], batch["index"]
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        what = (
            tuple(pixel_values.shape)
            if isinstance(pixel_values, torch.Tensor)
            else type(pixel_values).__name__
        )
        raise ValueError(f"batch['pixel_values'] must be a (B, 3, H, W) tensor, got {what}")
    index = torch.as_tensor(index)
    if index.shape != (pixel_values.shape[0],) or index.is_floating_point():
        raise ValueError(
            f"batch['index'] must be a ({pixel_values.shape[0]},) integer tensor matching "
            f"pixel_values {tuple(pixel_values.shape)}, got {index.dtype} {tuple(index.shape)}"
        )
    readable = batch.get("readable")
    if readable is None:
        readable = torch.ones(len(index), dtype=torch.bool)
    readable = torch.as_tensor(readable)
    if readable.shape != index.shape or readable.dtype != torch.bool:
        raise ValueError(
            f"batch['readable'] must be a ({len(index)},) bool tensor, got {readable.dtype} "
            f"{tuple(readable.shape)}"
        )
    return pixel_values, index.to(torch.int64), readable


def _embed(
    model: torch.nn.Module, pixel_values: torch.Tensor, dtype: torch.dtype | None
) -> torch.Tensor:
    """``(B, D)`` float32 embeddings of one batch."""
    autocast = (
        torch.autocast(device_type=pixel_values.device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        output = model(pixel_values=pixel_values)
    embeddings = getattr(output, "embeddings", None)
    if not isinstance(embeddings, torch.Tensor):
        raise ValueError(
            f"the model returned {type(output).__name__} without an 'embeddings' tensor; "
            f"expected a ReIDModelOutput-like output with embeddings of shape (B, D)"
        )
    if embeddings.ndim != 2 or embeddings.shape[0] != pixel_values.shape[0]:
        raise ValueError(
            f"model embeddings have shape {tuple(embeddings.shape)} for a batch of "
            f"{pixel_values.shape[0]} images; expected (B, D)"
        )
    return embeddings.float()


def _in_row_order(
    embeddings: np.ndarray, index: np.ndarray, expected_rows: int | None
) -> np.ndarray:
    """Place row ``index[i]`` at position ``index[i]``, after checking it is a permutation."""
    rows = expected_rows if expected_rows is not None else len(index)
    counts = np.bincount(index[(index >= 0) & (index < rows)], minlength=rows)
    out_of_range = index[(index < 0) | (index >= rows)]
    if len(index) != rows or out_of_range.size or (counts != 1).any():
        missing = np.flatnonzero(counts == 0)[:_MAX_LISTED_ROWS].tolist()
        repeated = np.flatnonzero(counts > 1)[:_MAX_LISTED_ROWS].tolist()
        raise ValueError(
            f"the loader's row numbers ('index') must be each of 0..{rows - 1} exactly once, "
            f"got {len(index)} rows: missing {missing}, repeated {repeated}, out of range "
            f"{out_of_range[:_MAX_LISTED_ROWS].tolist()} (at most {_MAX_LISTED_ROWS} listed "
            f"each). A loader that drops or repeats samples (drop_last, a shuffling or "
            f"padding sampler) cannot give embeddings in dataset order"
        )
    ordered = np.empty_like(embeddings, dtype=np.float32)
    ordered[index] = embeddings
    return ordered
