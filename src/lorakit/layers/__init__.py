"""The layers that wrap a base layer: LoRA, its fused autograd node, DoRA, the cheap dropout, the adapter bank."""
