"""png: a tiny raster canvas -> PNG bytes, for command-line pictures without an imaging dependency.

Contract: `Canvas(width, height)` with `rect`, `line` (optionally dashed), `arrow_head`, `text` (a built-in
5x7 ASCII font; other characters are drawn as '?'), then `to_png() -> bytes` (8-bit RGB, zlib, one IDAT).
Deliberately minimal: boxes, lines and labels are all a workflow picture needs.
"""

from __future__ import annotations

import math
import struct
import zlib

Color = tuple[int, int, int]

# The classic 5x7 LCD font (ASCII 32..126): five column bytes per glyph, least significant bit at the top.
_FONT = bytes.fromhex(
    "0000000000"
    "00005f0000"
    "0007000700"
    "147f147f14"
    "242a7f2a12"
    "2313086462"
    "3649552250"
    "0005030000"
    "001c224100"
    "0041221c00"
    "082a1c2a08"
    "08083e0808"
    "0050300000"
    "0808080808"
    "0060600000"
    "2010080402"
    "3e5149453e"
    "00427f4000"
    "4261514946"
    "2141454b31"
    "1814127f10"
    "2745454539"
    "3c4a494930"
    "0171090503"
    "3649494936"
    "064949291e"
    "0036360000"
    "0056360000"
    "0008142241"
    "1414141414"
    "4122140800"
    "0201510906"
    "324979413e"
    "7e1111117e"
    "7f49494936"
    "3e41414122"
    "7f4141221c"
    "7f49494941"
    "7f09090101"
    "3e41415132"
    "7f0808087f"
    "00417f4100"
    "2040413f01"
    "7f08142241"
    "7f40404040"
    "7f0204027f"
    "7f0408107f"
    "3e4141413e"
    "7f09090906"
    "3e4151215e"
    "7f09192946"
    "4649494931"
    "01017f0101"
    "3f4040403f"
    "1f2040201f"
    "7f2018207f"
    "6314081463"
    "0304780403"
    "6151494543"
    "00007f4141"
    "0204081020"
    "41417f0000"
    "0402010204"
    "4040404040"
    "0001020400"
    "2054545478"
    "7f48444438"
    "3844444420"
    "384444487f"
    "3854545418"
    "087e090102"
    "081454543c"
    "7f08040478"
    "00447d4000"
    "2040443d00"
    "007f102844"
    "00417f4000"
    "7c04180478"
    "7c08040478"
    "3844444438"
    "7c14141408"
    "081414187c"
    "7c08040408"
    "4854545420"
    "043f444020"
    "3c4040207c"
    "1c2040201c"
    "3c4030403c"
    "4428102844"
    "0c5050503c"
    "4464544c44"
    "0008364100"
    "00007f0000"
    "0041360800"
    "1008081008"
)
GLYPH_W, GLYPH_H = 6, 8  # advance and line height in pixels at scale 1 (5x7 glyph + spacing)


class Canvas:
    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"canvas must be at least 1x1, got {width}x{height}")
        self.width, self.height = int(width), int(height)
        self._px = bytearray(bytes(background) * (self.width * self.height))

    def set(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self._px[i : i + 3] = bytes(color)

    def get(self, x: int, y: int) -> Color:
        i = 3 * (y * self.width + x)
        return self._px[i], self._px[i + 1], self._px[i + 2]

    def rect(self, x: int, y: int, w: int, h: int, outline: Color, fill: Color | None = None) -> None:
        x, y, w, h = int(x), int(y), int(w), int(h)
        if fill is not None:
            for yy in range(y + 1, y + h - 1):
                for xx in range(x + 1, x + w - 1):
                    self.set(xx, yy, fill)
        for xx in range(x, x + w):
            self.set(xx, y, outline)
            self.set(xx, y + h - 1, outline)
        for yy in range(y, y + h):
            self.set(x, yy, outline)
            self.set(x + w - 1, yy, outline)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color, dash: int = 0) -> None:
        """Bresenham; `dash` > 0 draws `dash` pixels on, `dash` off."""
        x0, y0, x1, y1 = round(x0), round(y0), round(x1), round(y1)
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dash or (n // dash) % 2 == 0:
                self.set(x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            n += 1
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def arrow_head(self, x0: float, y0: float, x1: float, y1: float, color: Color, size: float = 7) -> None:
        """A filled arrow head at (x1, y1) pointing along the segment from (x0, y0)."""
        ang = math.atan2(y1 - y0, x1 - x0)
        for spread in range(-6, 7):
            a = ang + math.pi - spread * 0.06
            self.line(x1, y1, x1 + size * math.cos(a), y1 + size * math.sin(a), color)

    def text(self, x: int, y: int, s: str, color: Color = (0, 0, 0), scale: int = 1) -> None:
        """`s` with its top-left corner at (x, y)."""
        for n, ch in enumerate(s):
            c = ord(ch) if 32 <= ord(ch) <= 126 else ord("?")
            cols = _FONT[5 * (c - 32) : 5 * (c - 32) + 5]
            ox = x + n * GLYPH_W * scale
            for cx, bits in enumerate(cols):
                for cy in range(7):
                    if bits >> cy & 1:
                        for i in range(scale):
                            for j in range(scale):
                                self.set(ox + cx * scale + i, y + cy * scale + j, color)

    def to_png(self) -> bytes:
        row = 3 * self.width
        raw = b"".join(b"\x00" + bytes(self._px[y * row : (y + 1) * row]) for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )
