"""Ultrasound: B-mode cine loops and stills, one grey channel, frames at native mm/px.

Signal: often global anatomy (organ shape, echotexture of a whole region); noise: multiplicative
speckle from the coherent imaging process.
"""

from pretextlab.modalities.base import Display, Modality, ReaderDefaults, register_modality

ULTRASOUND = register_modality(
    Modality(
        name="ultrasound",
        description="B-mode ultrasound cine loops and stills (grayscale)",
        channels=1,
        intensity="log-compressed echo envelope",
        view_set="pretextlab.views.ultrasound:VIEW_SET",
        sampling="frames",
        resolution_unit="mm",
        noise="speckle",
        reader=ReaderDefaults(
            dicom_modalities=("US", "IVUS"), default_for=("dicom", "video", "stack-1"), still="cine", grayscale=True
        ),
        display=Display(grayscale=True, cmap="gray"),
    )
)
