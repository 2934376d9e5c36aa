"""Numba kernels (serial, nogil, cached) with typed wrappers that normalise their inputs.

The wrappers cast to one dtype and C order per kernel, so that a request never meets a new
signature (and a compile) that `warm_up` did not.
"""

from __future__ import annotations

from kernels.compiled.binning import (
    _edges_up32,
    _histogram_columns,
    _histogram_rows_f32,
    _histogram_rows_f64,
    argmax_add,
    bucketize,
    histogram,
    histogram_add,
)
from kernels.compiled.feature import _standardize, one_hot, standardize
from kernels.compiled.image import normalize_image, resize_bilinear
from kernels.compiled.score import nms, sigmoid, softmax, topk
from kernels.compiled.signature import _float

__all__ = [
    "_edges_up32",
    "_float",
    "_histogram_columns",
    "_histogram_rows_f32",
    "_histogram_rows_f64",
    "_standardize",
    "argmax_add",
    "bucketize",
    "histogram",
    "histogram_add",
    "nms",
    "normalize_image",
    "one_hot",
    "resize_bilinear",
    "sigmoid",
    "softmax",
    "standardize",
    "topk",
]
