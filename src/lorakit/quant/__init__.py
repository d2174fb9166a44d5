"""4-bit and 8-bit weights: NF4 / FP4 / int8 codes, the quantized linear layer, quantizing while loading."""
