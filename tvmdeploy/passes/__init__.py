"""tvmdeploy's own Relax passes (Relax has no pruning, quantization or affine folding)."""

from .fold_conv_affine import FoldConvChannelAffine
from .prune_channels import PruneChannels
from .prune_magnitude import PruneMagnitude

__all__ = ["FoldConvChannelAffine", "PruneChannels", "PruneMagnitude"]
