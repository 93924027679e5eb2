"""MLPerf Inference for ResNet50 v1.5: ImageNet dataset, LoadGen SUT, accuracy scoring.

``mlperf_loadgen`` is imported only by :mod:`.sut` and :mod:`.run`, so the dataset and
the accuracy scorer work without it.
"""
