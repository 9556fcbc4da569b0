"""The one definition of how an X-ray file becomes model input.

Training, evaluation, prediction and export all call these functions, so a deployed
model sees exactly the pixels the trained one saw:

1. decode the file (JPEG, PNG, optionally DICOM) to one 8-bit grey channel;
2. resize to ``image_size`` x ``image_size`` (bilinear, antialiased, aspect ratio not
   kept, like the redistributed Kaggle train split);
3. at batch time, scale to [0, 1], repeat the grey channel into R, G and B and normalise
   with the ImageNet mean and std, in channels-last memory order.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumo.errors import PneumoError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The one list of file formats pneumo reads as films, by extension: training, verify, eval and
# predict take these files and report every other file they meet (count and examples) as ignored.
# Other formats Pillow could decode (.webp, .gif, .jp2, ...) are not films here: convert them.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
# Chest films are at most ~4000 px a side; anything past this many pixels is a
# malformed or hostile file (a "decompression bomb"), not an X-ray.
MAX_PIXELS = 64_000_000
# Below this many pixels a side an image is no chest film (an icon, a 1x1 tracking pixel) and
# holds nothing to diagnose: a bad image, for training, verify and predict. 28 px is the
# smallest real data pneumo reads (PneumoniaMNIST).
MIN_SIDE = 28
# The version of the pixels load_image returns: raise it with any change to read_grey or
# load_image that changes them, so decoded-image caches on disk are rebuilt (pneumo.data.cache).
# 2: files of several frames (multi-page TIFF, animated PNG) are refused, no longer read as page 1.
DECODE_VERSION = 2


class BadImageError(PneumoError):
    """An image file that cannot be decoded; the message names the file and the reason."""


def _to_grey_uint8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, RGB, RGBA, P, 16-bit, float) to 8-bit grey."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float data: stretch the used range onto 0..255 instead of clipping.
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return Image.fromarray(((array - low) * scale).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA").convert("RGB")
    return image.convert("L")


def _check_size(path: Path, width: int, height: int) -> None:
    """Refuse, before decoding, an image too small to be a film or too large to be one."""
    if min(width, height) < MIN_SIDE:
        raise BadImageError(
            f"{path}: {width}x{height} px is smaller than {MIN_SIDE} px a side; not an X-ray film"
        )
    if width * height > MAX_PIXELS:
        raise BadImageError(
            f"{path}: declared size {width}x{height} is too large for an X-ray "
            f"(over {MAX_PIXELS:,} pixels); refusing to decode it"
        )


def _frames_message(path: Path, kind: str, frames: int) -> str:
    """The one line for a file holding several images: pneumo never picks one of them itself."""
    pages = "pages" if kind == "TIFF" else "frames"
    return (
        f"{path}: a {kind} with {frames} {pages}; pneumo reads single-frame films "
        f"(save the {pages[:-1]} to classify as its own file)"
    )


def _check_single_frame(path: Path, image: Image.Image) -> None:
    """Refuse a multi-page TIFF or an animated PNG as a multi-frame DICOM is refused: Pillow would
    otherwise show page 1 alone, and the other pages would go unread without a word."""
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        raise BadImageError(_frames_message(path, str(image.format or "file"), frames))


def _read_dicom(path: Path) -> Image.Image:
    """Read a single-frame DICOM film as a grey PIL image.

    The stored values go through the modality LUT (rescale slope and intercept) and then
    the VOI window, in the order the standard defines; MONOCHROME1 is inverted. The size is
    checked from the header before any pixel is decoded, and a multi-frame file is refused
    rather than guessed at.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:
        raise BadImageError(
            f"{path}: reading DICOM needs pydicom; install it with `pip install 'pneumo[dicom]'`"
        ) from err
    dataset = pydicom.dcmread(str(path))
    _check_size(path, int(dataset.get("Columns", 0) or 0), int(dataset.get("Rows", 0) or 0))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise BadImageError(_frames_message(path, "DICOM", frames))
    pixels = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset).astype(np.float32)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    if pixels.ndim == 3:  # colour DICOM: average the channels
        pixels = pixels.mean(axis=-1)
    return Image.fromarray(pixels, mode="F")


def read_grey(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` to an 8-bit grey PIL image at (about) its own size.

    ``draft_size`` lets JPEG decode at 1/2, 1/4 or 1/8 scale while staying at least that
    large: far faster for full-size films. Raises ``BadImageError`` naming the file for
    anything that is not a readable image: truncated or zero-byte files, text with an
    image extension, absurd dimensions.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise BadImageError(
            f"{path}: broken link to {os.readlink(path)} (its target is missing, or the link loops)"
        )
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"{path}: zero-byte file")
        if path.suffix.lower() == ".dcm":
            return _to_grey_uint8(_read_dicom(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(path)
            _check_size(path, *image.size)
            _check_single_frame(path, image)
            if draft_size:
                image.draft("L", (draft_size, draft_size))
            image.load()
            # a camera or scanner may store the film sideways with an orientation tag
            image = ImageOps.exif_transpose(image)
        return _to_grey_uint8(image)
    except BadImageError:
        raise
    except FileNotFoundError as err:
        raise BadImageError(f"{path}: file not found") from err
    except PermissionError as err:
        raise BadImageError(f"{path}: cannot read (permission denied)") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(
            f"{path}: declared size is too large for an X-ray, refusing to decode it ({err})"
        ) from err
    except UnidentifiedImageError as err:
        raise BadImageError(f"{path}: not a readable image ({err})") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(f"{path}: corrupt or truncated image ({err})") from err
    except Exception as err:  # any decoder failure is a bad file, never a crash
        raise BadImageError(f"{path}: cannot decode ({type(err).__name__}: {err})") from err


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """Decode ``path`` into a ``1 x image_size x image_size`` uint8 tensor (see ``read_grey``)."""
    grey = read_grey(path, draft_size=image_size).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(grey, dtype=np.uint8).copy()).unsqueeze(0)


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """A uint8 batch as float32 in [0, 1]: the one place pixels are scaled."""
    return batch.to(torch.float32).div_(255.0)


def to_model_input(
    batch: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """Turn a ``N x 1 x H x W`` batch (uint8, or float in [0, 1]) into normalised ``N x 3 x H x W``."""
    x = to_unit(batch) if batch.dtype == torch.uint8 else batch
    x = x.expand(-1, len(mean), -1, -1)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


def preprocessing_spec(image_size: int) -> dict:
    """Every step from file to model input, as plain data, for checkpoints and deployments.

    Precise enough to reimplement with numpy and PIL alone, pixel for pixel (as
    scripts/onnx_client.py does): it must change whenever ``read_grey``, ``load_image`` or
    ``to_model_input`` do.
    """
    size = [image_size, image_size]
    return {
        "image_size": image_size,
        "decode": {
            "library": "PIL (Pillow)",
            "formats": sorted(IMAGE_EXTENSIONS),
            "frames": (
                "single-frame files only: a multi-page TIFF, an animated PNG or a multi-frame DICOM "
                "is refused (Image.n_frames > 1, NumberOfFrames > 1), never read as its first frame"
            ),
            "exif_orientation": "applied after loading: ImageOps.exif_transpose(image)",
            "jpeg_draft": {
                "mode": "L",
                "size": size,
                "how": (
                    "Image.draft(mode, size) before loading: libjpeg decodes at 1/s scale, s the "
                    "largest of 8, 4, 2, 1 with s <= min(width // image_size, height // image_size), "
                    "and a colour JPEG straight to its luma (Y) channel; other formats ignore it"
                ),
            },
            "dicom": (
                "pydicom: single-frame files only, Rows x Columns checked like any image; "
                "pixel_array through apply_modality_lut (rescale slope and intercept, or the "
                "modality LUT) and then apply_voi_lut (the file's VOI LUT or window centre and "
                "width), as float32; MONOCHROME1 inverted as max - value; colour averaged over its "
                "channels; then the 16-bit stretch below"
            ),
        },
        "grey": {
            "8_bit": (
                "Image.convert('L'): L = R * 299/1000 + G * 587/1000 + B * 114/1000; RGBA and LA "
                "drop alpha (no compositing), palette images are expanded first"
            ),
            "16_bit": {
                "modes": ["I;16", "I;16B", "I;16L", "I", "F"],
                "how": (
                    "v = (x - min) * (255 / (max - min)) in float32, min and max over the whole "
                    "image, truncated towards zero to uint8; 0 everywhere when max == min"
                ),
            },
        },
        "resize": {
            "library": "PIL (Pillow)",
            "call": "Image.resize(size, filter) on the 8-bit grey image",
            "filter": "BILINEAR",
            "antialias": True,
            "size": size,
            "keep_aspect_ratio": False,
            "how": (
                "PIL's convolution resampling: a triangle kernel widened by the reduction factor "
                "(antialiased), result rounded to uint8"
            ),
        },
        "scale": {"divide_by": 255.0, "dtype": "float32"},
        "channels": "repeat the grey channel into 3 (R = G = B)",
        "channel_order": "RGB",
        "normalize": "(x - mean[c]) / std[c] per channel c, in float32",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "layout": "NCHW",
        "dtype": "float32",
    }
