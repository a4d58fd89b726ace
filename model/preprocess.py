"""nnU-Net's preprocessing of one image for inference, without the work inference discards.

``DefaultPreprocessor.run_case_npy`` is written for training data: it fills
the holes of the nonzero mask over the whole volume, turns the mask into a
segmentation and resamples that segmentation too (``np.unique`` over every
voxel). For inference only the image, the crop box and the shapes are used,
so this module computes the same things directly:

- the crop box is the bounding box of the nonzero voxels (filling holes never
  changes a bounding box: a hole is enclosed by foreground, so it lies inside);
- the filled mask is computed, on the cropped image only, when the plans
  normalise inside the mask (``use_mask_for_norm``);
- normalisation is nnU-Net's scheme classes, resampling the configuration's
  ``resampling_fn_data``, called exactly as ``run_case_npy`` calls them.

``tests/model/test_preprocess.py`` checks the result against ``run_case_npy``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["preprocess_image"]


def _normalizer(scheme: str) -> Any:
    import nnunetv2
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(join(nnunetv2.__path__[0], "preprocessing",
                                             "normalization"), scheme,
                                        "nnunetv2.preprocessing.normalization")
    if found is None:
        raise RuntimeError(f"Unable to locate class '{scheme}' for normalization")
    return found


def preprocess_image(array: np.ndarray, spacing: tuple[float, float, float], plans_manager: Any,
                     configuration_manager: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Crop, normalise and resample ``array`` ``(c, z, y, x)`` for the network.

    Parameters
    ----------
    array : numpy.ndarray
        float32 image ``(c, z, y, x)``; not modified.
    spacing : tuple of float
        ``(sz, sy, sx)`` in mm.
    plans_manager, configuration_manager
        nnU-Net's plans and the configuration being run.

    Returns
    -------
    tuple
        The preprocessed image and the properties nnU-Net's export reads
        (``spacing``, ``shape_before_cropping``, ``bbox_used_for_cropping``,
        ``shape_after_cropping_and_before_resampling``).
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import (
        bounding_box_to_slice,
        get_bbox_from_mask,
    )
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    pm, cm = plans_manager, configuration_manager
    data = array.transpose([0, *[i + 1 for i in pm.transpose_forward]])
    original_spacing = [spacing[i] for i in pm.transpose_forward]
    properties: dict[str, Any] = {"spacing": list(spacing),
                                  "shape_before_cropping": data.shape[1:]}
    nonzero = data[0] != 0
    for channel in data[1:]:
        nonzero |= channel != 0
    bbox = get_bbox_from_mask(nonzero)
    del nonzero
    slicer = bounding_box_to_slice(bbox)
    data = np.array(data[(slice(None), *slicer)], dtype=np.float32)  # a copy: normalised in place
    properties["bbox_used_for_cropping"] = bbox
    properties["shape_after_cropping_and_before_resampling"] = data.shape[1:]
    target_spacing = list(cm.spacing)
    if len(target_spacing) < len(data.shape[1:]):
        target_spacing = [original_spacing[0], *target_spacing]
    new_shape = compute_new_shape(data.shape[1:], original_spacing, target_spacing)
    if any(cm.use_mask_for_norm):
        mask = np.where(create_nonzero_mask(data), np.int8(0), np.int8(-1))
    else:
        mask = np.zeros(data.shape[1:], dtype=np.int8)  # read by no scheme without the mask
    intensities = pm.foreground_intensity_properties_per_channel
    for c in range(data.shape[0]):
        normalizer = _normalizer(cm.normalization_schemes[c])(
            use_mask_for_norm=cm.use_mask_for_norm[c], intensityproperties=intensities[str(c)])
        data[c] = normalizer.run(data[c], mask)
    del mask
    data = cm.resampling_fn_data(data, new_shape, original_spacing, target_spacing)
    return data, properties
