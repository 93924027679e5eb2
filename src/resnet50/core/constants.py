"""Facts of the MLPerf ResNet50 v1.5 model that several modules share."""

from __future__ import annotations

INPUT_NAME = "input_tensor:0"
UINT8_INPUT_NAME = "input_uint8"
ARGMAX_OUTPUT = "ArgMax:0"
SOFTMAX_OUTPUT = "softmax_tensor:0"
TOPK_INPUT = "top_k"
TOPK_OUTPUT_SCORES = "topk_scores"
TOPK_OUTPUT_IDS = "topk_class_ids"

NUM_CLASSES = 1001  # index 0 is "background"; 1..1000 are the ImageNet classes in synset order
INPUT_SIZE = 224
RESIZE_SHORT_SIDE = int(100.0 * INPUT_SIZE / 87.5)  # 256, exactly as the MLPerf reference computes it
MEANS_RGB = (123.68, 116.78, 103.94)
GMAC_PER_IMAGE = 4.09

#: The MLPerf releases of the model: URL and md5 of each file.
MLPERF_FILES = {
    "opset11": ("https://zenodo.org/record/4735647/files/resnet50_v1.onnx", "f6a4da60cd5f084d97efc2c1ddb10beb"),
    "opset8": ("https://zenodo.org/record/2592612/files/resnet50_v1.onnx", "a638cf028b5870da29e09ccc2f7182e7"),
}
MLPERF_MD5S = {md5: name for name, (_, md5) in MLPERF_FILES.items()}

FP32_TOP1 = 76.456  # published fp32 top-1 (%) on the 50,000 ImageNet validation images
MLPERF_TARGET_TOP1 = 75.6954  # MLPerf's 99% accuracy target (%)
