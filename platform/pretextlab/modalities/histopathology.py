"""Histopathology: H&E (or IHC) whole-slide images and tiles, RGB, read at a fixed µm/px.

Signal: small and local (nuclear atypia, mitoses, glands); noise: stain and scanner colour variation.
"""

from pretextlab.modalities.base import Display, Modality, ReaderDefaults, register_modality

HISTOPATHOLOGY = register_modality(
    Modality(
        name="histopathology",
        description="H&E / IHC whole-slide images and tiles (RGB, brightfield)",
        channels=3,
        intensity="transmitted light: stain optical density (Beer-Lambert), RGB",
        view_set="pretextlab.views.histopathology:VIEW_SET",
        sampling="patches",
        resolution_unit="um",
        noise="stain",
        reader=ReaderDefaults(dicom_modalities=("SM",), default_for=("image", "slide", "stack-3"), still="slide"),
        display=Display(grayscale=False),
    )
)
