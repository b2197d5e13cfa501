"""Image processor shared by every re-ID model: fixed-size resize, rescale, normalise.

Re-ID crops (pedestrians, typically 2:1 tall) are resized to a fixed ``(height, width)``
without keeping the aspect ratio, rescaled from 0..255 to 0..1 and normalised with a
per-channel mean and std. :class:`ReIDImageProcessor` is a transformers 5.x ``PilBackend``:
the base class merges per-call settings with the instance's, calls the validation hook and
provides ``save_pretrained`` / ``from_pretrained`` / ``AutoImageProcessor``. This module adds
what re-ID needs and ``PilBackend`` does not do: strict input and settings checks with
messages that name the bad value, float images resized without 8-bit quantisation, rescale
and normalise folded into one multiply-subtract, atomic saving, ``denormalize``, and a
uint8 torch batch fast path. A per-architecture default is a subclass that only overrides
class attributes::

    class AAformerImageProcessor(ViTReIDImageProcessor):
        size = {"height": 256, "width": 128}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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

from .utils import check_positive_number, write_atomically

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
#: Devices where PyTorch has a uint8 antialiased bilinear kernel (Pillow's fixed-point
#: algorithm); elsewhere the fast path interpolates in float32 and rounds like Pillow.
_UINT8_RESIZE_DEVICES = ("cpu",)
#: Settings ``PilBackend`` knows that re-ID preprocessing refuses, and why.
_REFUSED_SETTINGS = {
    "do_center_crop": "re-ID crops are resized to size without cropping",
    "do_pad": "every image is resized to size",
}


class ReIDImageProcessor(PilBackend):
    r"""Resize to a fixed ``(height, width)``, rescale by 1/255, normalise; RGB in, float32 out.

    Defaults (class attributes; override them in a subclass or per instance/call):
    ``size={"height": 256, "width": 128}``, bilinear resampling, ImageNet mean/std
    ``(0.485, 0.456, 0.406)`` / ``(0.229, 0.224, 0.225)``.

    Accepted inputs (single or batched; see :meth:`preprocess`): PIL images, numpy arrays and
    torch tensors (HWC or CHW, uint8 in 0..255 or floating point in 0..1), paths to image
    files. Output: ``BatchFeature`` with ``pixel_values`` of shape ``(B, 3, height, width)``,
    float32.

    Settings are checked once, at construction (so a bad ``preprocessor_config.json`` fails
    in ``from_pretrained``) and for each call's overrides. Center cropping and padding are
    rejected (``do_center_crop`` / ``do_pad``), as are ``do_convert_rgb=False`` (the models
    need three channels) and any output layout but channels-first.
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
        self._validate_preprocess_kwargs(**self._own_settings())

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
        same-shape uint8 torch tensors with 3 channels on one device, is processed as one
        batch by :func:`_uint8_batch_pixel_values` (on the tensors' device) when the
        resampling filter is bilinear; it matches the PIL path within one grey level before
        normalisation. Everything else takes the PIL path: each image is converted to RGB
        and resized with PIL, then the batch is rescaled and normalised with numpy.

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
        """The fast path on its own: resize + rescale + normalise a uint8 RGB batch in torch.

        Nothing in this package calls it (the trainer, extraction and the embedder hand PIL
        images or numpy crops to ``__call__``); it is for callers that hold decoded uint8
        tensors, e.g. from ``torchvision.io.decode_image`` or a GPU video decoder, and want
        the result on the tensors' device without a ``BatchFeature``. ``__call__`` routes
        such batches here by itself. It uses this processor's settings.

        Args:
            images_uint8: ``(B, 3, H, W)`` uint8 tensor, or a non-empty sequence of
                ``(3, H, W)`` uint8 tensors of one shape on one device.

        Returns:
            Contiguous ``(B, 3, height, width)`` float32 tensor on the input's device.

        Raises:
            ValueError: wrong type, dtype, rank, channel count or mixed shapes/devices, or a
                processor whose resampling filter is not bilinear (only bilinear is
                guaranteed to match PIL; use ``__call__`` for other filters).
        """
        batch, reason = _uint8_batch(images_uint8, ChannelDimension.FIRST)
        if batch is None:
            raise ValueError(reason)
        settings = self._own_settings()
        if not _fast_path_filter(settings):
            raise ValueError(
                f"preprocess_tensor_batch implements only bilinear resampling, but this "
                f"processor uses resample={PILImageResampling(self.resample).name}; call the "
                f"processor itself, which resizes with PIL for any filter"
            )
        return _uint8_batch_pixel_values(batch, settings)

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
            ValueError: wrong type, rank, channel count or dtype, or non-finite values.
        """
        values = pixel_values
        if isinstance(values, torch.Tensor):
            values = _tensor_to_numpy(values)
        if not isinstance(values, np.ndarray):
            raise ValueError(
                f"pixel_values must be a numpy array or torch tensor, got "
                f"{type(pixel_values).__name__}"
            )
        if not np.issubdtype(values.dtype, np.floating):
            raise ValueError(f"pixel_values must be floating point, got dtype {values.dtype}")
        if values.ndim not in (3, 4) or values.shape[-3] != 3:
            raise ValueError(
                f"pixel_values must have shape (B, 3, H, W) or (3, H, W), got {values.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError("pixel_values contain NaN or infinite values")
        scale, shift = _affine_coefficients(**self._own_settings())
        grey_levels = (values.astype(np.float32) + shift[:, None, None]) / scale[:, None, None]
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
            loaded = load_image_file(image)
            try:
                return np.moveaxis(np.asarray(to_rgb_image(loaded)), -1, 0)
            except ValueError as error:
                raise ValueError(f"image file {str(image)!r}: {error}") from error
        if isinstance(image, PIL.Image.Image):
            return np.moveaxis(np.asarray(to_rgb_image(image)), -1, 0)
        if isinstance(image, torch.Tensor):
            return _array_to_rgb_chw(_tensor_to_numpy(image), input_data_format, "CHW")
        if isinstance(image, np.ndarray):
            return _array_to_rgb_chw(image, input_data_format, "HWC")
        raise ValueError(
            f"expected a PIL image, numpy array, torch tensor or image file path, got "
            f"{type(image).__name__}"
        )

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write the processor's JSON config to ``json_file_path`` atomically, so an
        interrupted ``save_pretrained`` never leaves a truncated ``preprocessor_config.json``."""
        text = self.to_json_string()
        write_atomically(Path(json_file_path), lambda f: f.write(text.encode("utf-8")))

    # --- transformers hooks -------------------------------------------------------------

    def _own_settings(self) -> dict[str, Any]:
        """The instance's settings, as ``preprocess`` resolves them for a call without
        overrides."""
        return {name: getattr(self, name) for name in self._valid_kwargs_names}

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
        do_convert_rgb: bool | None = None,
        data_format: str | ChannelDimension | None = None,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors: str | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        """Check the resolved settings of a call (or of the instance); raise ValueError.

        The one place settings are checked: the processing code trusts them.
        """
        if do_resize:
            _check_target_size(size)
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
        if do_rescale:
            check_positive_number("rescale_factor", rescale_factor)
        if do_normalize:
            _check_channel_vector("image_mean", image_mean)
            if np.any(_check_channel_vector("image_std", image_std) <= 0):
                raise ValueError(f"image_std must be positive, got {image_std!r}")
        for name, reason in _REFUSED_SETTINGS.items():
            if kwargs.get(name):
                raise ValueError(f"{name}=True is not supported: {reason}")
        if do_convert_rgb is False:
            raise ValueError(
                "do_convert_rgb=False is not supported: re-ID models take 3-channel RGB input"
            )
        if data_format is not None and data_format != ChannelDimension.FIRST:
            raise ValueError(
                f"data_format must be 'channels_first' (pixel_values are (B, 3, H, W)), got "
                f"{data_format!r}"
            )
        if input_data_format not in (None, ChannelDimension.FIRST, ChannelDimension.LAST):
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
        batch, _ = _uint8_batch(images, kwargs.get("input_data_format"))
        if batch is not None and _fast_path_filter(kwargs):
            if kwargs.get("device") is not None:
                # Moving uint8 before the float conversion transfers 4x fewer bytes.
                batch = batch.to(kwargs["device"])
            pixel_values = _uint8_batch_pixel_values(batch, kwargs)
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
        return_tensors: str | None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """PIL path: resize each ``(3, H, W)`` image with PIL, then normalise the batch.

        ``kwargs`` holds the rest of the call's settings (rescale and normalise among them).
        """
        if do_resize:
            filter_ = PILImageResampling(resample)
            target = (size.height, size.width)
            images = [_resize_with_pil(image, target, filter_) for image in images]
        shapes = sorted({image.shape for image in images})
        if len(shapes) > 1:
            raise ValueError(
                f"with do_resize=False all images must already have one size to form a batch, "
                f"got shapes {shapes}"
            )
        # np.stack copies, so the in-place affine below never touches the caller's arrays.
        batch = np.stack(images).astype(np.float32, copy=False)
        scale, shift = _affine_coefficients(**kwargs)
        batch *= scale[:, None, None]
        batch -= shift[:, None, None]
        return _batch_feature(batch, return_tensors, device)


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


def load_image_file(path: str | os.PathLike) -> PIL.Image.Image:
    """Open and fully decode an image file (EXIF orientation applied).

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        ValueError: PIL cannot decode it (corrupt, truncated, not an image); names the file.
    """
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


def to_rgb_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """The RGB rendering of a PIL image; transparency is composited onto white.

    Raises:
        ValueError: as :func:`check_pil_image`.
    """
    check_pil_image(image)
    if image.mode in _ALPHA_PIL_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(white, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


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


def _uint8_batch(
    images: ReIDImageInput, input_data_format: str | ChannelDimension | None
) -> tuple[torch.Tensor | None, str]:
    """The input as one uint8 ``(B, 3, H, W)`` tensor for the fast path, or ``None`` and the
    reason it is not one (which ``preprocess_tensor_batch`` raises and ``__call__`` answers by
    taking the PIL path, whose errors name the offending image)."""
    if isinstance(images, list | tuple):
        if not images:
            return None, "got an empty list of images"
        for index, item in enumerate(images):
            if not isinstance(item, torch.Tensor) or item.ndim != 3 or item.dtype != torch.uint8:
                tensor = isinstance(item, torch.Tensor)
                what = f"{item.dtype}, shape {tuple(item.shape)}" if tensor else type(item).__name__
                return None, f"images[{index}] must be a (3, H, W) uint8 tensor, got {what}"
        shapes = sorted({tuple(item.shape) for item in images})
        if len(shapes) > 1:
            return None, f"all images must have one shape to form a batch, got {shapes}"
        devices = sorted({str(item.device) for item in images})
        if len(devices) > 1:
            return None, f"all images must be on one device, got {devices}"
        images = torch.stack(list(images))
    if not isinstance(images, torch.Tensor):
        return None, (
            f"expected a (B, 3, H, W) uint8 tensor or a list of (3, H, W) uint8 tensors, got "
            f"{type(images).__name__}"
        )
    if images.dtype != torch.uint8:
        return None, (
            f"the tensor fast path takes uint8 images (0..255), got dtype {images.dtype}; "
            f"call the processor itself for floating-point images"
        )
    shape_error = f"expected a non-empty (B, 3, H, W) uint8 batch, got shape {tuple(images.shape)}"
    if images.ndim != 4 or images.shape[0] == 0:
        return None, shape_error
    if images.numel() == 0:
        return None, f"images have zero size: shape {tuple(images.shape)}"
    try:
        axis = _channel_axis(tuple(images.shape[1:]), input_data_format, "CHW")
    except ValueError:
        return None, shape_error
    if axis == 2:
        # A (B, H, W, 3) tensor permuted this way is already channels-last in memory, the
        # layout the CPU uint8 kernel wants.
        images = images.permute(0, 3, 1, 2)
    return (images, "") if images.shape[1] == 3 else (None, shape_error)


def _fast_path_filter(settings: Mapping[str, Any]) -> bool:
    """Whether the settings' resize is one the fast path reproduces (bilinear, or none):
    torch's antialiased bicubic differs from Pillow's by up to 16 grey levels on noise."""
    return not settings["do_resize"] or (
        PILImageResampling(settings["resample"]) == PILImageResampling.BILINEAR
    )


def _uint8_batch_pixel_values(batch: torch.Tensor, settings: Mapping[str, Any]) -> torch.Tensor:
    """The fast path: a uint8 ``(B, 3, H, W)`` batch -> ``(B, 3, height, width)`` float32
    ``pixel_values`` on the batch's device, under the (checked) ``settings``.

    One bilinear antialiased resize for the whole batch, then one multiply and one subtract.
    The resize yields whole grey levels on every device, like Pillow, so the result matches
    the PIL path within one grey level before normalisation, and bit for bit where the
    resized pixels agree (mul then sub, as in the PIL path, not addcmul).
    """
    target = (settings["size"].height, settings["size"].width) if settings["do_resize"] else None
    if target is None or tuple(batch.shape[-2:]) == target:
        # PIL returns an unchanged copy for a same-size resize; skip the kernel too.
        resized = batch
    elif batch.device.type in _UINT8_RESIZE_DEVICES:
        # The uint8 kernel is several times faster on channels-last input than on NCHW.
        resized = F.interpolate(
            batch.contiguous(memory_format=torch.channels_last),
            size=target,
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    else:
        # No uint8 kernel here: interpolate in float32, then round to whole grey levels.
        resized = F.interpolate(
            batch.to(torch.float32),
            size=target,
            mode="bilinear",
            antialias=True,
            align_corners=False,
        ).round_().clamp_(0, 255)
    if resized.device.type == "cpu":
        # Filling a fresh large float tensor is dominated by page faults; numpy asks the
        # kernel for transparent huge pages for large buffers and torch's CPU allocator does
        # not, which makes this conversion 3-4x faster on Linux.
        out = torch.from_numpy(np.empty(tuple(resized.shape), dtype=np.float32))
        out.copy_(resized)
    else:
        out = resized.to(torch.float32, memory_format=torch.contiguous_format)
    scale, shift = _affine_coefficients(**settings)
    out.mul_(torch.from_numpy(scale).to(out.device).view(1, 3, 1, 1))
    out.sub_(torch.from_numpy(shift).to(out.device).view(1, 3, 1, 1))
    return out


# --- settings ---------------------------------------------------------------------------------


def _check_target_size(size: SizeDict | None) -> None:
    """``size`` must be exactly ``{height, width}`` with positive integers."""
    if size is None:
        raise ValueError("do_resize=True needs size={'height': H, 'width': W}")
    entries = dict(size)
    if set(entries) != {"height", "width"} or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in entries.values()
    ):
        raise ValueError(
            f"size must be {{'height': H, 'width': W}} with positive integers (re-ID crops are "
            f"resized without keeping the aspect ratio), got {entries}"
        )


def _check_channel_vector(name: str, value: float | Sequence[float] | None) -> np.ndarray:
    """A per-channel setting (a number, or one number per RGB channel) as a float64 (3,)."""
    message = f"{name} must be a finite number or 3 finite numbers, got {value!r}"
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(message) from error
    if vector.ndim == 0:
        vector = np.full(3, vector)
    if vector.shape != (3,) or not np.isfinite(vector).all():
        raise ValueError(message)
    return vector


def _affine_coefficients(
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: float | Sequence[float],
    image_std: float | Sequence[float],
    **other_settings: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``(scale, shift)`` with output = grey_level * scale - shift.

    Rescale and normalise fold into one multiply and one subtract:
    ``(x * r - mean) / std = x * (r / std) - mean / std``. ``other_settings`` lets callers
    pass a whole resolved settings dict.
    """
    scale = np.full(3, rescale_factor if do_rescale else 1.0, dtype=np.float64)
    shift = np.zeros(3, dtype=np.float64)
    if do_normalize:
        std = np.broadcast_to(np.asarray(image_std, dtype=np.float64), (3,))
        scale = scale / std
        shift = np.broadcast_to(np.asarray(image_mean, dtype=np.float64), (3,)) / std
    return scale.astype(np.float32), shift.astype(np.float32)


def _batch_feature(
    pixel_values: np.ndarray | torch.Tensor,
    return_tensors: str | None,
    device: str | torch.device | None,
) -> BatchFeature:
    """Wrap ``pixel_values`` in the requested container ("pt": torch, else numpy)."""
    if return_tensors == "pt":
        tensor = torch.as_tensor(pixel_values)
        return BatchFeature(data={"pixel_values": tensor if device is None else tensor.to(device)})
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.cpu().numpy()
    return BatchFeature(data={"pixel_values": pixel_values})


__all__ = [
    "SUPPORTED_PIL_MODES",
    "ReIDImageInput",
    "ReIDImageProcessor",
    "ViTReIDImageProcessor",
    "check_pil_image",
    "load_image_file",
    "to_rgb_image",
]
