"""Decoders' own stderr lines (libpng, libjpeg, libtiff, OpenCV) never reach the terminal."""

from __future__ import annotations

import os
import sys
import threading

import cv2
import numpy as np

from hostile import noisy_images
from resnet50 import InvalidInputError, preprocess


def test_decoder_noise_never_reaches_the_terminal(capfd, tmp_path):
    outcomes = {}
    for name, data in noisy_images().items():
        path = tmp_path / name
        path.write_bytes(data)
        try:
            preprocess(os.fspath(path))
            outcomes[name] = "ok"
        except InvalidInputError as exc:
            assert str(exc).startswith(f"{path}: ")
            outcomes[name] = str(exc).removeprefix(f"{path}: ")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""  # fd level: what C code writes is caught too
    assert outcomes["iccp.png"] == "ok"
    assert outcomes["cut.png"] == "not a decodable image (corrupt PNG data)"  # IEND kept: libpng finds the cut
    assert outcomes["ihdr.png"] == "not a decodable image (corrupt PNG data)"


def test_quiet_native_is_thread_safe_and_keeps_python_writes(capfd):
    """Several threads decode noisy files while another thread writes to sys.stderr: every Python
    line arrives, no library line does, and C stdio's stderr works again afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    from resnet50.processing.preprocess import decode

    noisy = list(noisy_images().values()) * 20
    stop = threading.Event()

    def writer():
        for i in range(200):
            sys.stderr.write(f"python line {i}\n")
            sys.stderr.flush()
        stop.set()

    def decode_quietly(data):
        try:
            decode(data)
        except InvalidInputError:
            return

    thread = threading.Thread(target=writer)
    with ThreadPoolExecutor(4) as pool:
        thread.start()
        list(pool.map(decode_quietly, noisy))
        thread.join()
    err = capfd.readouterr().err.splitlines()
    assert err == [f"python line {i}" for i in range(200)]
    cv2.imdecode(np.frombuffer(noisy_images()["iccp.png"], np.uint8), cv2.IMREAD_COLOR)  # outside: not silenced
    assert "libpng warning: iCCP: too short" in capfd.readouterr().err
