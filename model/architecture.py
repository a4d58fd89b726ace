"""nnU-Net v2 plans entries for a PlainConvUNet (used to build small model folders)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["plain_conv_unet_architecture"]


def plain_conv_unet_architecture(
    features_per_stage: Sequence[int], *, n_conv_per_stage: int = 2
) -> dict[str, Any]:
    """Return the ``architecture`` entry of a 3d_fullres configuration in ``plans.json``.

    Parameters
    ----------
    features_per_stage
        Feature maps per encoder stage; the number of stages is its length.
        Every stage after the first halves the resolution (stride 2).
    n_conv_per_stage
        Convolutions per encoder stage (the decoder has the same per stage).

    Returns
    -------
    dict
        The dict nnunetv2's ``get_network_from_plans`` reads: class name,
        keyword arguments and which of them name importable classes.
    """
    n_stages = len(features_per_stage)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": list(features_per_stage),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n_stages,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
            "n_conv_per_stage": [n_conv_per_stage] * n_stages,
            "n_conv_per_stage_decoder": [n_conv_per_stage] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
