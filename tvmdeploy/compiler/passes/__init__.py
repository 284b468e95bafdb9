"""tvmdeploy's own Relax passes (Relax has no pruning, quantization or affine folding)."""

from .fold_conv_affine import FoldConvChannelAffine
from .identifier_names import IdentifierParamNames
from .prune_channels import PruneChannels
from .prune_magnitude import PruneMagnitude

__all__ = ["FoldConvChannelAffine", "IdentifierParamNames", "PruneChannels", "PruneMagnitude"]
