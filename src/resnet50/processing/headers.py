"""Image sizes as their headers declare them, read without decoding (no dependency beyond the stdlib).

A file of a few kilobytes can declare gigapixels: a JPEG whose SOF says 30000x30000 makes the
decoder fill gigabytes with gray before it notices the data is missing. :func:`declared_size` reads
the size from the header of JPEG, PNG, BMP, WebP, TIFF and PNM files so that decoding can be
refused first. Formats it does not know, and headers it cannot parse, give ``None``: the
decoder then judges the file (OpenCV refuses more than 2^30 pixels itself).
"""

from __future__ import annotations

import struct


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header of ``data``, or None when unknown."""
    try:
        for sniff in (_png, _jpeg, _bmp, _webp, _tiff, _pnm):
            size = sniff(data)
            if size is not None:
                return size
    except (struct.error, IndexError, ValueError):
        return None
    return None


def format_name(data: bytes) -> str | None:
    """The format the signature of ``data`` names ("JPEG", "PNG", ...), or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if len(data) > 1 and data[:1] == b"P" and data[1:2] in b"123456":
        return "PNM"
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """The largest frame a JPEG declares before its first scan (APPn thumbnails are skipped whole)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos, best = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return best
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the frame header came before
            return best
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if best is None or width * height > best[0] * best[1]:
                best = (width, height)
        pos += 2 + length
    return best


def _bmp(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM" or len(data) < 26:
        return None
    header = struct.unpack("<I", data[14:18])[0]
    if header == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def _webp(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff(data: bytes) -> tuple[int, int] | None:
    """Width and length tags of the first image directory."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    if order is None:
        return None
    offset = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[offset : offset + 2])[0]
    found: dict[int, int] = {}
    for i in range(min(count, 4096)):
        entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            value = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
            found[tag] = value
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _pnm(data: bytes) -> tuple[int, int] | None:
    if data[:1] != b"P" or data[1:2] not in (b"1", b"2", b"3", b"4", b"5", b"6"):
        return None
    tokens: list[int] = []
    pos = 2
    while len(tokens) < 2 and pos < min(len(data), 4096):
        char = data[pos : pos + 1]
        if char == b"#":  # a comment runs to the end of its line
            end = data.find(b"\n", pos)
            pos = len(data) if end < 0 else end + 1
        elif char.isspace():
            pos += 1
        elif char.isdigit():
            start = pos
            while pos < len(data) and data[pos : pos + 1].isdigit():
                pos += 1
            tokens.append(int(data[start:pos]))
        else:
            return None
    return (tokens[0], tokens[1]) if len(tokens) == 2 else None
