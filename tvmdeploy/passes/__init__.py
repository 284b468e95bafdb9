"""tvmdeploy's own Relax passes (Relax has no pruning, quantization or affine folding)."""

from .fold_conv_affine import FoldConvChannelAffine

__all__ = ["FoldConvChannelAffine"]
