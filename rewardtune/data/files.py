"""Reading the user's files safely: JSON, images, paths inside a data root.

Every failure raises `DataError` with one line naming the file.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError


def read_json(path: str) -> Any:
    """Parse a JSON file; missing, unreadable or truncated files raise DataError naming the file."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed or truncated JSON ({getattr(e, 'msg', e)})") from None


def write_json_atomic(obj: Any, path: str) -> None:
    """Write JSON to `path` via a temporary file and a rename: never half-written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def inside(root: str, relative: str, what: str = "file_name", context: str = "") -> str:
    """Join `relative` to `root`, refusing absolute paths and '..' that escape `root`.

    `context` (e.g. "instances_train.json: image 7") prefixes the error, naming where the name came from.
    """
    prefix = f"{context}: " if context else ""
    if not isinstance(relative, str) or not relative:
        raise DataError(f"{prefix}{root}: {what} {relative!r} is not a file name")
    root_abs = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_abs, relative))
    if os.path.isabs(relative) or os.path.commonpath([root_abs, full]) != root_abs:
        raise DataError(f"{prefix}{relative}: {what} escapes the image folder {root}")
    return full


def require_folder(folder: str, what: str = "image folder", source: str = "") -> None:
    """DataError naming `folder` (and `source`, the file that points to it) unless it is a directory."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: {what} not found" + (f" (for {source})" if source else ""))


def load_rgb(path: str) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB; missing or corrupt files raise DataError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e.__class__.__name__})") from None


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8 (bilinear; no-op when already that size)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)
