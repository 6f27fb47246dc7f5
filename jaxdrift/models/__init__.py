"""Flax ports of the Keras Applications backbones used by the study."""

from jaxdrift.models.registry import (ARCHS, SPECS, TINY, ArchSpec, default_cam_layer,
                                      default_input_size, preprocess, spec)
