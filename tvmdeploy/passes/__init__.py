"""tvmdeploy's own Relax passes (Relax has no pruning, quantization or affine folding)."""

from .fold_conv_affine import FoldConvChannelAffine
from .identifier_names import IdentifierParamNames

__all__ = ["FoldConvChannelAffine", "IdentifierParamNames"]
