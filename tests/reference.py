"""An independent copy of the MLPerf reference preprocessing (mlcommons/inference,
vision/classification_and_detection/python/dataset.py), used only to check ours."""

from __future__ import annotations

import cv2
import numpy as np


def resize_with_aspectratio(img, out_height, out_width, scale=87.5, inter_pol=cv2.INTER_LINEAR):
    height, width, _ = img.shape
    new_height = int(100.0 * out_height / scale)
    new_width = int(100.0 * out_width / scale)
    if height > width:
        w = new_width
        h = int(new_height * height / width)
    else:
        h = new_height
        w = int(new_width * width / height)
    return cv2.resize(img, (w, h), interpolation=inter_pol)


def center_crop(img, out_height, out_width):
    height, width, _ = img.shape
    left = int((width - out_width) / 2)
    right = int((width + out_width) / 2)
    top = int((height - out_height) / 2)
    bottom = int((height + out_height) / 2)
    return img[top:bottom, left:right]


def pre_process_vgg(img, dims=(224, 224, 3), need_transpose=True):
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    output_height, output_width, _ = dims
    img = resize_with_aspectratio(img, output_height, output_width, inter_pol=cv2.INTER_AREA)
    img = center_crop(img, output_height, output_width)
    img = np.asarray(img, dtype="float32")
    means = np.array([123.68, 116.78, 103.94], dtype=np.float32)
    img -= means
    if need_transpose:
        img = img.transpose([2, 0, 1])
    return img


def reference_tensor(path) -> np.ndarray:
    """What the MLPerf harness feeds the model for this file: float32 [1,3,224,224]."""
    return pre_process_vgg(cv2.imread(str(path)))[None]
