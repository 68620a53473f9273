"""What a trained image model is judged by (DESIGN.md §7).

likelihood.py  test NLL by importance sampling with the GFlowNet encoder: M = 5000 by default,
               float64, M = 1 and 100 from the same draws, nats per image and bits per pixel,
               mean ± standard error over images
images.py      PNG mosaics of images (samples, reconstructions), written with zlib alone
"""
