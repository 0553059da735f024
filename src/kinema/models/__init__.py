"""Models: the video VAE, the denoisers (DiT, 3D U-Net) and the text encoders.

Model files hold no distributed code, no file I/O and no CLI parsing; saving and
loading lives in `kinema.models.checkpoint`.
"""
