"""Grids of images as PNG files, written with zlib alone (no imaging library needed).

A PNG is a signature and three chunks (IHDR, IDAT, IEND), each length-prefixed and CRC-32
checked (W3C PNG specification, 2nd ed., §5, §11); 8-bit greyscale, filter type 0 on every
row. Pixel values in [0, 1] (Bernoulli means, or binary images) map to 0..255 with white ink
on black, as MNIST is drawn.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

from gfnem_cli.engine.files import write_atomic

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tile(images: torch.Tensor, columns: int, padding: int = 2, background: float = 0.5
         ) -> torch.Tensor:
    """(N, H, W) in [0, 1] → one (rows·(H+p)+p, columns·(W+p)+p) mosaic, row-major."""
    n, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    cells = torch.full((rows * columns, h + padding, w + padding), background)
    cells[:n, :h, :w] = images.detach().float().cpu().clamp(0, 1)
    mosaic = (cells.view(rows, columns, h + padding, w + padding).permute(0, 2, 1, 3)
              .reshape(rows * (h + padding), columns * (w + padding)))
    return torch.nn.functional.pad(mosaic, (padding, 0, padding, 0), value=background)


def png_bytes(pixels: torch.Tensor) -> bytes:
    """(H, W) in [0, 1] → the bytes of an 8-bit greyscale PNG."""
    height, width = pixels.shape
    data = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), data], 1)   # filter byte 0
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    return (_SIGNATURE + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.numpy().tobytes(), 9)) + chunk(b"IEND", b""))


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, padding: int = 2) -> Path:
    """Write a mosaic of (N, H, W) images in [0, 1] to `path` atomically."""
    payload = png_bytes(tile(images, columns, padding))
    write_atomic(Path(path), lambda handle: handle.write(payload))
    return Path(path)
