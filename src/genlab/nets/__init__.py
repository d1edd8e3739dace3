"""Plain nn.Modules (no Lightning): encoders, decoders, generators, discriminators."""

from genlab.nets.conv import ConvDecoder, ConvEncoder, conv_plan

__all__ = ["ConvDecoder", "ConvEncoder", "conv_plan"]
