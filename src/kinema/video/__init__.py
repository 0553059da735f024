"""Video files in and out: the `Video` value, `read_video`, `write_video` and `probe_video`.

Frames cross this boundary as uint8 `(T, H, W, 3)` numpy arrays; `Video.to_tensor`
gives the library's float `(3, T, H, W)` in [-1, 1].
"""

from kinema.video.core import Video, VideoError, to_tensor, to_uint8
from kinema.video.read import VideoInfo, probe_video, read_video
from kinema.video.write import write_video

__all__ = ["Video", "VideoError", "VideoInfo", "probe_video", "read_video", "write_video", "to_tensor", "to_uint8"]
