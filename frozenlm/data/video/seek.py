"""Decode only the frames a clip needs with PyAV: read the packet index, seek to the keyframe before
each needed frame, decode forward to it.

Frame ``i`` is the ``i``-th frame in presentation order, exactly as a full decode counts it. The
packet scan (demuxing, no decoding) gives every frame's pts and which frames are keyframes; the
decoder's output is then checked against that list, pts by pts. Anything that breaks the
one-packet-one-frame picture (a packet without pts, a stream that does not start on a keyframe, a
seek that lands past its keyframe, a pts the scan did not list, end of file before a needed frame)
raises :class:`SeekUnsafe`, and the caller decodes the whole file instead, so the frames returned are
always those of the full decode.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence



class SeekUnsafe(Exception):
    """This file cannot be decoded by seeking with a frame-exact guarantee (decode it whole)."""


@dataclass(frozen=True)
class PacketIndex:
    """Presentation-ordered pts of every frame of a stream and the positions of its keyframes."""

    pts: list[int]
    keyframes: list[int]

    @property
    def num_frames(self) -> int:
        """Frames in the stream (what a full decode yields when every packet holds one frame)."""
        return len(self.pts)

    def keyframe_before(self, i: int) -> int:
        """Position of the last keyframe at or before frame ``i``."""
        return self.keyframes[bisect.bisect_right(self.keyframes, i) - 1]


def scan_packets(container: Any, stream: Any) -> PacketIndex:
    """Demux ``stream`` once (no decoding) into a :class:`PacketIndex`; the container is left at EOF."""
    first_key: bool | None = None
    entries: list[tuple[int, bool]] = []
    for pkt in container.demux(stream):
        if pkt.size == 0 or pkt.is_discard:  # the flush packet at EOF; packets an edit list drops
            continue
        if pkt.pts is None:
            raise SeekUnsafe("a packet has no pts")
        if first_key is None:
            first_key = bool(pkt.is_keyframe)
        entries.append((int(pkt.pts), bool(pkt.is_keyframe)))
    entries.sort()
    pts = [p for p, _ in entries]
    keys = [i for i, (_, k) in enumerate(entries) if k]
    if not first_key or not keys or keys[0] != 0 or len(set(pts)) != len(pts):
        # Frames before the first keyframe may be dropped by the decoder; duplicate pts are ambiguous.
        raise SeekUnsafe("the stream does not start on a keyframe, or its pts repeat")
    return PacketIndex(pts, keys)


def decode_by_seeking(container: Any, stream: Any, index: PacketIndex, wanted: Sequence[int]) -> dict[int, Any]:
    """Decoded frames {i: av.VideoFrame} for the frame positions ``wanted``, decoding from the keyframe
    before each run of needed frames (one seek per run; no seek when decoding on is cheaper).

    The frames stay in the decoder's format: converting each to RGB while the decoder runs was about
    3x slower per frame on the moving-shapes clips than converting them all after decoding."""
    need = set(int(i) for i in wanted)
    got: dict[int, Any] = {}
    frames = None
    pos = 0  # the position of the next frame the decoder will hand over
    for target in sorted(need):
        if target in got:
            continue
        key = index.keyframe_before(target)
        if frames is None or key > pos:  # seeking skips frames pos..key-1; otherwise decode on
            container.seek(index.pts[key], stream=stream, backward=True, any_frame=False)  # flushes the decoder
            frames, pos = container.decode(stream), key
        for frame in frames:
            if frame.pts is None:
                raise SeekUnsafe("a decoded frame has no pts")
            if frame.pts < index.pts[pos]:  # decoded after the seek but shown before the keyframe
                continue
            if frame.pts != index.pts[pos]:
                raise SeekUnsafe(f"decoder gave pts {frame.pts} where the packet scan has {index.pts[pos]}")
            if pos in need:
                got[pos] = frame
            pos += 1
            if pos > target:
                break
        else:
            raise SeekUnsafe(f"end of stream before frame {target}")
    return got
