"""Plain nn.Modules (no Lightning): encoders, decoders, generators, discriminators."""

from genlab.nets.conv import ConvDecoder, ConvEncoder, conv_plan
from genlab.nets.mlp import ACTIVATIONS, MLPDecoder, MLPEncoder

__all__ = ["ACTIVATIONS", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "conv_plan"]
