"""Radiograph: projection X-ray (DICOM CR/DX, PNG exports), one grey channel, stored as one-frame stills.

Signal: global anatomy (heart size, lung fields, bone alignment); noise: quantum (Poisson) noise and
scatter. Views: pretextlab.views.radiograph.
"""

from pretextlab.modalities.base import Display, Modality, ReaderDefaults, register_modality

RADIOGRAPH = register_modality(
    Modality(
        name="radiograph",
        description="projection radiographs: DICOM CR/DX and PNG exports (grayscale)",
        channels=1,
        intensity="log of transmitted X-ray fluence (attenuation line integral)",
        view_set="pretextlab.views.radiograph:VIEW_SET",
        sampling="frames",
        resolution_unit="mm",
        noise="quantum",
        reader=ReaderDefaults(dicom_modalities=("CR", "DX", "RG"), still="cine", grayscale=True),
        display=Display(grayscale=True, cmap="gray"),
    )
)
