"""The DAVIS / PASCAL-VOC colour palette of label-map PNGs (read by eval, written by the demo data)."""

from __future__ import annotations


def davis_palette() -> list[int]:
    """The 256-colour DAVIS/PASCAL-VOC palette (flat list of 768 ints): 0 black, 1 dark red, ..."""
    pal = []
    for k in range(256):
        r = g = b = 0
        c = k
        for bit in range(8):  # spread the id's bits over the high bits of r, g, b
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        pal += [r, g, b]
    return pal
