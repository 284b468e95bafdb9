"""Read-only analyses of a Relax graph that several compile stages share (pruning,
quantization, statistics): the layer/channel walk and the layer-call helpers."""
