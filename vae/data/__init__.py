"""Binary image sets for the image family (DESIGN.md §7), prepared once and read back checked.

mnist.py     MNIST from the gzipped IDX files (threshold protocol, validation hold-out) or the
             static binarization (npz, checksums); every input defect a one-line error
shapes.py    the embedded default: images drawn from a known discrete-latent model, with the
             exact log p(x) by the forward algorithm stored as the NLL floor
disk.py      the on-disk format: DatasetDict + manifest (counts, fingerprint, file checksums),
             written into a temporary sibling and swapped in
dataset.py   load_image_set: the set back as tensors, any damage a one-line error
batching.py  ImageBatch, ImageSchedule (deterministic epochs), in_order_batches
"""
from vae.data.batching import ImageBatch, ImageSchedule, in_order_batches
from vae.data.dataset import ImageSet, load_image_set
from vae.data.mnist import prepare_mnist, read_static, read_threshold
from vae.data.shapes import ShapesModel, prepare_shapes

__all__ = ["ImageBatch", "ImageSchedule", "in_order_batches", "ImageSet", "load_image_set",
           "prepare_mnist", "read_static", "read_threshold", "ShapesModel", "prepare_shapes"]
