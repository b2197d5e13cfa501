"""Image processor shared by every re-ID model: fixed-size resize, rescale, normalise.

Re-ID crops (pedestrians, typically 2:1 tall) are resized to a fixed ``(height, width)``
without keeping the aspect ratio, rescaled from 0..255 to 0..1 and normalised with a
per-channel mean and std. The processor follows the transformers 5.x PIL backend
(``PilBackend`` with declarative class attributes), so ``save_pretrained`` /
``from_pretrained`` / ``AutoImageProcessor`` work as for any transformers model, and a
per-architecture default is a subclass that only overrides class attributes::

    class AAformerImageProcessor(ReIDImageProcessor):
        size = {"height": 256, "width": 128}
        image_mean = image_std = [0.5, 0.5, 0.5]

Two paths compute the same thing:

* the PIL path (reference): every image is converted to RGB, resized with PIL, then the
  whole batch is rescaled and normalised with numpy;
* the tensor fast path: a uint8 ``(B, 3, H, W)`` torch batch is resized with one
  ``F.interpolate(mode="bilinear", antialias=True)`` on the batch's device and normalised
  there. Before normalisation it matches the PIL path within one grey level (1/255 after
  rescaling). ``__call__`` takes it automatically for uint8 torch batches of a bilinear
  processor (see :meth:`ReIDImageProcessor.preprocess`); call
  :meth:`ReIDImageProcessor.preprocess_tensor_batch` directly to keep a GPU batch on its
  device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias, Unpack

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs

from .utils import write_atomically

SingleImage: TypeAlias = PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike
"""One image: a PIL image, a 2-D/3-D array or tensor, or the path of an image file."""

ReIDImageInput: TypeAlias = SingleImage | Sequence[SingleImage]
"""One image, a list/tuple of images, or a 4-D array/tensor holding a batch."""

#: PIL modes that have a well-defined 8-bit RGB rendering, which the processor converts.
#: 16/32-bit integer ("I", "I;16*") and float ("F") images have no fixed 0..255 range, and
#: Pillow's LAB/HSV -> RGB conversions are not colorimetric, so those are rejected rather
#: than silently mangled.
SUPPORTED_PIL_MODES: tuple[str, ...] = (
    "1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"
)
_ALPHA_PIL_MODES = ("LA", "PA", "RGBA", "RGBa")
_ACCEPTED_CHANNELS = (1, 3, 4)
_RETURN_TENSORS = (None, "np", "pt")


class ReIDImageProcessor(PilBackend):
    r"""Resize to a fixed ``(height, width)``, rescale by 1/255, normalise; RGB in, float32 out.

    Defaults (class attributes; override them in a subclass or per instance/call):
    ``size={"height": 256, "width": 128}``, bilinear resampling, ImageNet mean/std
    ``(0.485, 0.456, 0.406)`` / ``(0.229, 0.224, 0.225)``.

    Accepted inputs (single or batched; see :meth:`preprocess`): PIL images, numpy arrays and
    torch tensors (HWC or CHW, uint8 in 0..255 or floating point in 0..1), paths to image
    files. Output: ``BatchFeature`` with ``pixel_values`` of shape ``(B, 3, height, width)``,
    float32.

    Center cropping and padding are not part of re-ID preprocessing and are rejected
    (``do_center_crop`` / ``do_pad``), as is ``do_convert_rgb=False`` (the models need three
    channels) and any output layout but channels-first.
    """

    size = {"height": 256, "width": 128}
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[ImagesKwargs]) -> None:
        super().__init__(**kwargs)
        # Fail at construction (or at from_pretrained of a bad JSON file) rather than at the
        # first batch, possibly hours into an evaluation run.
        self._validate_preprocess_kwargs(
            **{name: getattr(self, name) for name in self._valid_kwargs_names}
        )

    def preprocess(self, images: ReIDImageInput, **kwargs: Unpack[ImagesKwargs]) -> BatchFeature:
        """Turn one image or a batch of images into ``pixel_values``.

        Args:
            images: a single image or a batch:

                * ``PIL.Image.Image`` in mode 1, L, LA, P (transparency included), PA, RGB,
                  RGBA, RGBa, RGBX, CMYK or YCbCr. Transparent pixels are composited onto
                  white, like transformers' ``convert_to_rgb``.
                * ``np.ndarray`` / ``torch.Tensor`` of shape (H, W), (H, W, C) or (C, H, W)
                  with C in {1, 3, 4} (grey, RGB, RGBA), dtype uint8 (0..255) or floating
                  point (0..1, finite). Where both ends of the shape could be channels,
                  arrays are read as HWC and tensors as CHW; pass ``input_data_format`` to
                  decide explicitly. A 3-D input is always one image.
                * ``str`` / ``os.PathLike``: a local image file, opened with PIL (EXIF
                  orientation applied).
                * a list/tuple of the above, or a 4-D array/tensor ``(B, H, W, C)`` /
                  ``(B, C, H, W)``.
            **kwargs: per-call overrides of the processor's settings (``size``,
                ``resample``, ``do_rescale``, ``rescale_factor``, ``do_normalize``,
                ``image_mean``, ``image_std``, ``do_resize``), plus ``return_tensors``
                (``None`` or ``"np"``: numpy; ``"pt"``: torch), ``device`` (with
                ``return_tensors="pt"``: where ``pixel_values`` end up; the fast path also
                computes there) and ``input_data_format``.

        Returns:
            ``BatchFeature`` with ``pixel_values`` of shape ``(B, 3, height, width)``,
            float32 (a single image gives B = 1).

        Fast path: a uint8 torch tensor ``(B, 3, H, W)`` or ``(B, H, W, 3)``, or a list of
        same-shape uint8 torch tensors with 3 channels, is processed as one batch by
        :meth:`preprocess_tensor_batch`'s code (on the tensors' device) when the resampling
        filter is bilinear. It matches the PIL path within one grey level before
        normalisation. Everything else takes the PIL path.

        Raises:
            ValueError: an unsupported input (type, dtype, shape, zero size, PIL mode,
                non-finite or out-of-range values, undecodable file) or setting; the message
                names it (and the image's position in a batch, or its file).
            FileNotFoundError: a path that is not an existing file.
        """
        return super().preprocess(images, **kwargs)

    def preprocess_tensor_batch(
        self, images_uint8: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Resize + rescale + normalise a uint8 RGB batch with torch, on its own device.

        This is the batched fast path used by ``__call__`` for uint8 tensors and by the
        trainer after batched augmentation on the GPU. It uses this processor's ``size``,
        ``rescale_factor``, ``image_mean`` and ``image_std``. On CPU it runs PyTorch's uint8
        antialiased kernel (Pillow's algorithm, channels-last); elsewhere it interpolates in
        float32 and rounds to whole grey levels like Pillow. Either way it matches the PIL
        path within one grey level before normalisation.

        Args:
            images_uint8: ``(B, 3, H, W)`` uint8 tensor, or a non-empty sequence of
                ``(3, H, W)`` uint8 tensors of one shape on one device.

        Returns:
            ``(B, 3, height, width)`` float32 tensor on the input's device.

        Raises:
            ValueError: wrong type, dtype, rank, channel count or mixed shapes/devices, or a
                processor whose resampling filter is not bilinear (only bilinear is
                guaranteed to match PIL; use ``__call__`` for other filters).
        """
        batch = _stack_uint8_batch(images_uint8)
        resample = PILImageResampling(self.resample)
        if self.do_resize and resample != PILImageResampling.BILINEAR:
            raise ValueError(
                f"preprocess_tensor_batch implements only bilinear resampling, but this "
                f"processor uses resample={resample.name}; call the processor itself, which "
                f"resizes with PIL for any filter"
            )
        return self._tensor_batch_path(
            batch,
            do_resize=self.do_resize,
            size=self.size,
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            image_mean=self.image_mean,
            image_std=self.image_std,
        )

    def denormalize(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        """Undo rescaling and normalisation: ``pixel_values`` back to 8-bit RGB images.

        Uses this processor's ``image_mean`` / ``image_std`` / ``rescale_factor`` (and its
        ``do_normalize`` / ``do_rescale`` switches), so call it on the processor that made
        the values. Values outside the 8-bit range (e.g. after augmentation) are clipped.

        Args:
            pixel_values: ``(B, 3, H, W)`` or ``(3, H, W)`` floating-point array or tensor.

        Returns:
            uint8 numpy array ``(B, H, W, 3)`` (or ``(H, W, 3)`` for a 3-D input), ready for
            ``PIL.Image.fromarray``.

        Raises:
            ValueError: wrong rank, channel count or dtype, or non-finite values.
        """
        if isinstance(pixel_values, torch.Tensor):
            if not pixel_values.is_floating_point():
                raise ValueError(
                    f"pixel_values must be floating point, got a tensor of dtype "
                    f"{pixel_values.dtype}"
                )
            values = pixel_values.detach().to("cpu", torch.float32).numpy()
        elif isinstance(pixel_values, np.ndarray):
            if not np.issubdtype(pixel_values.dtype, np.floating):
                raise ValueError(
                    f"pixel_values must be floating point, got an array of dtype "
                    f"{pixel_values.dtype}"
                )
            values = pixel_values.astype(np.float32, copy=False)
        else:
            raise ValueError(
                f"pixel_values must be a numpy array or torch tensor, got "
                f"{type(pixel_values).__name__}"
            )
        if values.ndim not in (3, 4) or values.shape[-3] != 3:
            raise ValueError(
                f"pixel_values must have shape (B, 3, H, W) or (3, H, W), got {values.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError("pixel_values contain NaN or infinite values")
        scale, shift = _affine_coefficients(
            self.do_rescale,
            self.rescale_factor,
            self.do_normalize,
            self.image_mean,
            self.image_std,
        )
        grey_levels = (values + shift[:, None, None]) / scale[:, None, None]
        rgb = np.clip(np.rint(grey_levels), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.moveaxis(rgb, -3, -1))

    def process_image(
        self,
        image: SingleImage,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Convert one raw image to a ``(3, H, W)`` RGB array on the 0..255 scale.

        uint8 inputs stay uint8; floating-point inputs (0..1) become float32 multiplied by
        255, so both share one scale and ``rescale_factor`` applies to both. Other keyword
        arguments (the processor's settings) are accepted and ignored, as in transformers.

        Raises:
            ValueError / FileNotFoundError: as described in :meth:`preprocess`.
        """
        if isinstance(image, str | os.PathLike):
            loaded = _load_image_file(image)
            try:
                return np.moveaxis(_pil_to_rgb(loaded), -1, 0)
            except ValueError as error:
                raise ValueError(f"image file {str(image)!r}: {error}") from error
        if isinstance(image, PIL.Image.Image):
            return np.moveaxis(_pil_to_rgb(image), -1, 0)
        if isinstance(image, torch.Tensor):
            return _array_to_rgb_chw(_tensor_to_numpy(image), input_data_format, "CHW")
        if isinstance(image, np.ndarray):
            return _array_to_rgb_chw(image, input_data_format, "HWC")
        raise ValueError(
            f"expected a PIL image, numpy array, torch tensor or image file path, got "
            f"{type(image).__name__}"
        )

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write the processor's JSON config to ``json_file_path`` atomically.

        The JSON is written to a temporary file in the same directory and renamed over the
        target, so an interrupted ``save_pretrained`` never leaves a truncated
        ``preprocessor_config.json`` behind.
        """
        text = self.to_json_string()
        write_atomically(Path(json_file_path), lambda f: f.write(text.encode("utf-8")))

    # --- transformers hooks -------------------------------------------------------------

    def _validate_preprocess_kwargs(
        self,
        do_resize: bool | None = None,
        size: SizeDict | None = None,
        resample: PILImageResampling | int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_center_crop: bool | None = None,
        do_pad: bool | None = None,
        do_convert_rgb: bool | None = None,
        data_format: str | ChannelDimension | None = None,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors: str | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        """Check the resolved settings of a call (or of the instance); raise ValueError."""
        if do_resize:
            if size is None:
                raise ValueError("do_resize=True needs size={'height': H, 'width': W}")
            _target_size(size)
        if resample is not None:
            try:
                PILImageResampling(resample)
            except ValueError as error:
                valid = ", ".join(f"{m.name}={m.value}" for m in PILImageResampling)
                raise ValueError(
                    f"resample must be a PIL resampling filter ({valid}), got {resample!r}"
                ) from error
        elif do_resize:
            raise ValueError("do_resize=True needs a resample filter, got resample=None")
        if do_rescale and not _is_positive_number(rescale_factor):
            raise ValueError(
                f"rescale_factor must be a positive finite number, got {rescale_factor!r}"
            )
        if do_normalize:
            _channel_vector("image_mean", image_mean)
            if np.any(_channel_vector("image_std", image_std) <= 0):
                raise ValueError(f"image_std must be positive, got {image_std!r}")
        if do_center_crop:
            raise ValueError(
                "do_center_crop=True is not supported: re-ID crops are resized to size "
                "without cropping"
            )
        if do_pad:
            raise ValueError("do_pad=True is not supported: every image is resized to size")
        if do_convert_rgb is False:
            raise ValueError(
                "do_convert_rgb=False is not supported: re-ID models take 3-channel RGB input"
            )
        if data_format is not None and data_format != ChannelDimension.FIRST:
            raise ValueError(
                f"data_format must be 'channels_first' (pixel_values are (B, 3, H, W)), got "
                f"{data_format!r}"
            )
        if input_data_format is not None and input_data_format not in (
            ChannelDimension.FIRST,
            ChannelDimension.LAST,
        ):
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got "
                f"{input_data_format!r}"
            )
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")
        if device is not None and return_tensors != "pt":
            raise ValueError(
                f"device={device!r} needs return_tensors='pt' (numpy output lives on the CPU), "
                f"got return_tensors={return_tensors!r}"
            )

    def _preprocess_image_like_inputs(self, images: ReIDImageInput, **kwargs: Any) -> BatchFeature:
        """Route uint8 torch batches to the tensor fast path, everything else to PIL."""
        batch = _uint8_tensor_batch(images, kwargs.get("input_data_format"))
        bilinear_or_no_resize = not kwargs["do_resize"] or (
            PILImageResampling(kwargs["resample"]) == PILImageResampling.BILINEAR
        )
        if batch is not None and bilinear_or_no_resize:
            if kwargs.get("device") is not None:
                # Moving uint8 before the float conversion transfers 4x fewer bytes.
                batch = batch.to(kwargs["device"])
            pixel_values = self._tensor_batch_path(
                batch,
                do_resize=kwargs["do_resize"],
                size=kwargs["size"],
                do_rescale=kwargs["do_rescale"],
                rescale_factor=kwargs["rescale_factor"],
                do_normalize=kwargs["do_normalize"],
                image_mean=kwargs["image_mean"],
                image_std=kwargs["image_std"],
            )
            return _batch_feature(pixel_values, kwargs["return_tensors"], None)
        prepared = self._prepare_image_like_inputs(
            images, input_data_format=kwargs.get("input_data_format")
        )
        return self._preprocess(prepared, **kwargs)

    def _prepare_image_like_inputs(
        self,
        images: ReIDImageInput,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> list[np.ndarray]:
        """Flatten the input to single images and convert each with :meth:`process_image`.

        Returns a list of ``(3, H, W)`` arrays (uint8, or float32 on the 0..255 scale).
        """
        single, items = _as_image_list(images)
        if single:
            return [self.process_image(items[0], input_data_format)]
        prepared = []
        for index, item in enumerate(items):
            try:
                prepared.append(self.process_image(item, input_data_format))
            except ValueError as error:
                raise ValueError(f"images[{index}]: {error}") from error
            except FileNotFoundError as error:
                raise FileNotFoundError(f"images[{index}]: {error}") from error
        return prepared

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float],
        image_std: float | Sequence[float],
        return_tensors: str | None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """PIL path: resize each ``(3, H, W)`` image with PIL, then normalise the batch."""
        if do_resize:
            target = _target_size(size)
            filter_ = PILImageResampling(resample)
            images = [_resize_with_pil(image, target, filter_) for image in images]
        shapes = sorted({image.shape for image in images})
        if len(shapes) > 1:
            raise ValueError(
                f"with do_resize=False all images must already have one size to form a batch, "
                f"got shapes {shapes}"
            )
        # np.stack copies, so the in-place affine below never touches the caller's arrays.
        batch = np.stack(images).astype(np.float32, copy=False)
        scale, shift = _affine_coefficients(
            do_rescale, rescale_factor, do_normalize, image_mean, image_std
        )
        batch *= scale[:, None, None]
        batch -= shift[:, None, None]
        return _batch_feature(batch, return_tensors, device)

    def _tensor_batch_path(
        self,
        batch: torch.Tensor,
        *,
        do_resize: bool,
        size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float],
        image_std: float | Sequence[float],
    ) -> torch.Tensor:
        """Resize (bilinear, antialiased) and normalise a uint8 ``(B, 3, H, W)`` batch."""
        target = _target_size(size) if do_resize else tuple(batch.shape[-2:])
        if tuple(batch.shape[-2:]) != target:
            resized = _resize_uint8_batch(batch, target)
        else:
            # PIL returns an unchanged copy for a same-size resize; skip the kernel too.
            resized = batch
        scale, shift = _affine_coefficients(
            do_rescale, rescale_factor, do_normalize, image_mean, image_std
        )
        if resized.device.type == "cpu":
            # Filling a fresh large float tensor is dominated by page faults; numpy asks the
            # kernel for transparent huge pages for large buffers and torch's CPU allocator does
            # not, which makes this conversion 3-4x faster on Linux.
            out = torch.from_numpy(np.empty(tuple(resized.shape), dtype=np.float32))
            out.copy_(resized)
        else:
            out = resized.to(torch.float32, memory_format=torch.contiguous_format)
        # mul then sub (not addcmul) so the result is bit-identical to the numpy PIL path
        # wherever the resized pixels agree.
        out.mul_(torch.from_numpy(scale).to(out.device).view(1, 3, 1, 1))
        out.sub_(torch.from_numpy(shift).to(out.device).view(1, 3, 1, 1))
        return out


class ViTReIDImageProcessor(ReIDImageProcessor):
    """:class:`ReIDImageProcessor` with mean = std = 0.5, as ViT checkpoints (and TransReID-
    style re-ID models built on them) expect; 256x128, bilinear."""

    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD


# --- input conversion ---------------------------------------------------------------------


def _as_image_list(images: ReIDImageInput) -> tuple[bool, list[SingleImage]]:
    """Split the input into single images; the flag says whether it was one image."""
    if isinstance(images, np.ndarray | torch.Tensor):
        if images.ndim in (2, 3):
            return True, [images]
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError(f"got an empty batch of shape {tuple(images.shape)}")
            return False, list(images)
        raise ValueError(
            f"expected an image of shape (H, W), (H, W, C) or (C, H, W), or a batch of shape "
            f"(B, H, W, C) or (B, C, H, W); got shape {tuple(images.shape)}"
        )
    if isinstance(images, list | tuple):
        if not images:
            raise ValueError("got an empty list of images")
        for index, item in enumerate(images):
            if isinstance(item, list | tuple):
                raise ValueError(
                    f"images[{index}] is a {type(item).__name__}: nested batches are not "
                    f"supported, pass one flat list of images"
                )
            if isinstance(item, np.ndarray | torch.Tensor) and item.ndim not in (2, 3):
                raise ValueError(
                    f"images[{index}] has shape {tuple(item.shape)}: list items must be single "
                    f"images of shape (H, W), (H, W, C) or (C, H, W)"
                )
        return False, list(images)
    return True, [images]


def _load_image_file(path: str | os.PathLike) -> PIL.Image.Image:
    """Open and fully decode an image file (EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist or is not a file")
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            return PIL.ImageOps.exif_transpose(opened)
    except PermissionError:
        raise
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        # Pillow reports corrupt or truncated files as OSError/SyntaxError subclasses.
        raise ValueError(f"cannot decode image file {str(path)!r}: {error}") from error


def check_pil_image(image: PIL.Image.Image) -> None:
    """Raise ``ValueError`` if :class:`ReIDImageProcessor` cannot convert ``image`` to RGB.

    Only the mode and size are looked at, which PIL knows from the file's header: this also
    works on an image opened with ``PIL.Image.open`` and not decoded yet (what dataset
    verification relies on).

    Raises:
        ValueError: the image has zero width or height, or a mode outside
            :data:`SUPPORTED_PIL_MODES` (e.g. 16-bit ``I;16``); the message says which.
    """
    if image.width == 0 or image.height == 0:
        raise ValueError(
            f"image has zero size: PIL image of {image.width}x{image.height} pixels "
            f"(width x height)"
        )
    if image.mode not in SUPPORTED_PIL_MODES:
        raise ValueError(
            f"unsupported PIL image mode {image.mode!r}; expected one of "
            f"{', '.join(SUPPORTED_PIL_MODES)}. 16/32-bit integer and float images have no "
            f"fixed 0..255 range: scale them yourself to uint8, or to a float array in [0, 1]"
        )


def _pil_to_rgb(image: PIL.Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB array of a PIL image; transparency is composited onto white."""
    check_pil_image(image)
    if image.mode in _ALPHA_PIL_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(white, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().to("cpu")
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        # numpy has no bfloat16; float32 holds every half/bfloat16 value exactly.
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def _channel_axis(
    shape: tuple[int, ...],
    input_data_format: str | ChannelDimension | None,
    preferred: str,
) -> int:
    """Index (0 or 2) of the channel axis of a 3-D image shape."""
    if input_data_format is not None:
        return 0 if ChannelDimension(input_data_format) == ChannelDimension.FIRST else 2
    first, last = shape[0] in _ACCEPTED_CHANNELS, shape[2] in _ACCEPTED_CHANNELS
    if first and last:
        return 0 if preferred == "CHW" else 2
    # One end must look like channels and the other must be too long to be channels;
    # otherwise, e.g. (4, 5, 2) could be a 2-channel HWC image or a 5x2 RGBA one.
    if last and shape[0] > max(_ACCEPTED_CHANNELS):
        return 2
    if first and shape[2] > max(_ACCEPTED_CHANNELS):
        return 0
    raise ValueError(
        f"cannot find a channel axis in shape {shape}: expected (H, W, C) or (C, H, W) with "
        f"C in {_ACCEPTED_CHANNELS} (grey, RGB, RGBA); 2-channel images are not supported. "
        f"For images under 5 pixels on a side, pass input_data_format"
    )


def _array_to_rgb_chw(
    array: np.ndarray, input_data_format: str | ChannelDimension | None, preferred: str
) -> np.ndarray:
    """``(3, H, W)`` RGB array (uint8, or float32 on the 0..255 scale) from a raw array."""
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"unsupported dtype {array.dtype}; expected uint8 (0..255) or floating point "
            f"(0..1). Convert integer images with .astype(np.uint8) after checking their range"
        )
    if array.size == 0:
        raise ValueError(f"image has zero size: shape {array.shape}")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, _channel_axis(array.shape, input_data_format, preferred), 0)
    else:
        raise ValueError(
            f"expected an image of shape (H, W), (H, W, C) or (C, H, W), got shape {array.shape}"
        )
    channels = array.shape[0]
    if channels not in _ACCEPTED_CHANNELS:
        raise ValueError(
            f"image has {channels} channels (shape {array.shape} read as channels-first); "
            f"expected 1 (grey), 3 (RGB) or 4 (RGBA)"
        )
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError("floating-point image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"floating-point image has values in [{low:g}, {high:g}]; expected [0, 1] "
                f"(or pass uint8 for 0..255)"
            )
        array = array * 255.0
    if channels == 1:
        return np.repeat(array, 3, axis=0)
    if channels == 4:
        alpha = array[3:].astype(np.float32) / 255.0
        composite = array[:3] * alpha + 255.0 * (1.0 - alpha)
        if array.dtype == np.uint8:
            return np.clip(np.rint(composite), 0, 255).astype(np.uint8)
        return composite.astype(np.float32)
    return array


def _resize_with_pil(
    image: np.ndarray, size: tuple[int, int], resample: PILImageResampling
) -> np.ndarray:
    """Resize a ``(3, H, W)`` array to ``size=(height, width)`` with PIL; dtype preserved."""
    height, width = size
    if image.dtype == np.uint8:
        pil = PIL.Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
        return np.moveaxis(np.asarray(pil.resize((width, height), resample=resample)), -1, 0)
    # Float images are resized per channel in PIL's 32-bit float mode, so they are not
    # quantised to 8 bits on the way.
    return np.stack(
        [
            np.asarray(
                PIL.Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize(
                    (width, height), resample=resample
                )
            )
            for channel in image
        ]
    )


def _uint8_tensor_batch(
    images: ReIDImageInput, input_data_format: str | ChannelDimension | None
) -> torch.Tensor | None:
    """The input as a uint8 ``(B, 3, H, W)`` tensor if it qualifies for the fast path."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.numel() == 0:
            # Zero-size images go to the PIL path too, which names the image it refuses.
            return None
        batch = images
    elif isinstance(images, list | tuple) and images:
        if not all(
            isinstance(item, torch.Tensor)
            and item.dtype == torch.uint8
            and item.ndim == 3
            and item.numel() > 0
            for item in images
        ):
            return None
        if len({item.shape for item in images}) > 1 or len({item.device for item in images}) > 1:
            return None
        batch = torch.stack(list(images))
    else:
        return None
    try:
        axis = _channel_axis(tuple(batch.shape[1:]), input_data_format, "CHW")
    except ValueError:
        return None  # the PIL path reports the bad shape, naming the offending image
    if axis == 2:
        # A (B, H, W, 3) tensor permuted this way is already channels-last in memory, the
        # layout the CPU uint8 kernel wants.
        batch = batch.permute(0, 3, 1, 2)
    return batch if batch.shape[1] == 3 else None


def _stack_uint8_batch(images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Validate the fast path's input and return it as one ``(B, 3, H, W)`` tensor."""
    if isinstance(images, list | tuple):
        if not images:
            raise ValueError("got an empty list of images")
        for index, item in enumerate(images):
            if not isinstance(item, torch.Tensor) or item.ndim != 3:
                what = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
                raise ValueError(f"images[{index}] must be a (3, H, W) uint8 tensor, got {what}")
        shapes = sorted({tuple(item.shape) for item in images})
        if len(shapes) > 1:
            raise ValueError(f"all images must have one shape to form a batch, got {shapes}")
        devices = sorted({str(item.device) for item in images})
        if len(devices) > 1:
            raise ValueError(f"all images must be on one device, got {devices}")
        images = torch.stack(list(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            f"expected a (B, 3, H, W) uint8 tensor or a list of (3, H, W) uint8 tensors, got "
            f"{type(images).__name__}"
        )
    if images.dtype != torch.uint8:
        raise ValueError(
            f"the tensor fast path takes uint8 images (0..255), got dtype {images.dtype}; "
            f"call the processor itself for floating-point images"
        )
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty (B, 3, H, W) uint8 batch, got shape {tuple(images.shape)}"
        )
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images have zero size: shape {tuple(images.shape)}")
    return images


def _resize_uint8_batch(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of a uint8 ``(B, 3, H, W)`` batch to ``size=(h, w)``.

    Returns whole grey levels: uint8 on CPU, float32 elsewhere.
    """
    if batch.device.type != "cpu":
        return _resize_float_rounded(batch, size)
    # PyTorch's CPU uint8 antialias kernel follows Pillow's fixed-point algorithm and is
    # several times faster on channels-last input than on NCHW.
    return F.interpolate(
        batch.contiguous(memory_format=torch.channels_last),
        size=size,
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )


def _resize_float_rounded(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The accelerator branch of :func:`_resize_uint8_batch` (GPUs have no uint8 antialias
    kernel): interpolate in float32, then round to whole grey levels as Pillow does, so
    batches agree with the PIL path on every device alike."""
    resized = F.interpolate(
        batch.to(torch.float32), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round_().clamp_(0, 255)


# --- settings ---------------------------------------------------------------------------------


def _target_size(size: SizeDict | dict[str, int]) -> tuple[int, int]:
    """``(height, width)`` of a size setting that must be exactly ``{height, width}``."""
    entries = dict(size)
    height, width = entries.get("height"), entries.get("width")
    if set(entries) != {"height", "width"} or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)
    ):
        raise ValueError(
            f"size must be {{'height': H, 'width': W}} with positive integers (re-ID crops are "
            f"resized without keeping the aspect ratio), got {entries}"
        )
    return height, width


def _is_positive_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _channel_vector(name: str, value: float | Sequence[float] | None) -> np.ndarray:
    """A per-channel setting (a number, or one number per RGB channel) as a float64 (3,)."""
    values = [value] * 3 if isinstance(value, int | float) else value
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a number or 3 numbers, got {value!r}") from error
    if vector.shape != (3,) or not np.isfinite(vector).all():
        raise ValueError(f"{name} must be a finite number or 3 finite numbers, got {value!r}")
    return vector


def _affine_coefficients(
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: float | Sequence[float],
    image_std: float | Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``(scale, shift)`` with output = grey_level * scale - shift.

    Rescale and normalise fold into one multiply and one subtract:
    ``(x * r - mean) / std = x * (r / std) - mean / std``.
    """
    scale = np.full(3, rescale_factor if do_rescale else 1.0, dtype=np.float64)
    shift = np.zeros(3, dtype=np.float64)
    if do_normalize:
        std = _channel_vector("image_std", image_std)
        scale = scale / std
        shift = _channel_vector("image_mean", image_mean) / std
    return scale.astype(np.float32), shift.astype(np.float32)


def _batch_feature(
    pixel_values: np.ndarray | torch.Tensor,
    return_tensors: str | None,
    device: str | torch.device | None,
) -> BatchFeature:
    """Wrap ``pixel_values`` in the requested container ("pt": torch, else numpy)."""
    if return_tensors == "pt":
        tensor = torch.as_tensor(pixel_values)
        if device is not None:
            tensor = tensor.to(device)
        return BatchFeature(data={"pixel_values": tensor})
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.cpu().numpy()
    return BatchFeature(data={"pixel_values": pixel_values})


__all__ = [
    "SUPPORTED_PIL_MODES",
    "ReIDImageInput",
    "ReIDImageProcessor",
    "ViTReIDImageProcessor",
    "check_pil_image",
]
