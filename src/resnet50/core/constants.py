"""The MLPerf ResNet50 v1.5 interface: tensor names and shapes (facts about weights are in the registry)."""

from __future__ import annotations

INPUT_NAME = "input_tensor:0"
UINT8_INPUT_NAME = "input_uint8"
ARGMAX_OUTPUT = "ArgMax:0"
SOFTMAX_OUTPUT = "softmax_tensor:0"
TOPK_INPUT = "top_k"
TOPK_OUTPUT_SCORES = "topk_scores"
TOPK_OUTPUT_IDS = "topk_class_ids"

NUM_CLASSES = 1001  # the MLPerf file's and the synthetic model's outputs: index 0 is "background"
INPUT_SIZE = 224
