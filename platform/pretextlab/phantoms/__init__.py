"""Controlled benchmark phantoms: physically motivated ultrasound and H&E images whose label lives in
global structure (a region's outline) or local structure (a small lesion, a few atypical nuclei).

Pure NumPy / SciPy, depends only on ``pretextlab.core``. One entry point::

    from pretextlab.phantoms import generate
    ps = generate("ultrasound", n=400, size=64, locality=1.0, noise=0.5, seed=0)
    ps.images  # (400, 64, 64, 1) uint8; ps.labels (400,); ps.masks (400, 64, 64) bool

``locality`` moves the label from global (0) to local (1) structure; ``noise`` sets speckle strength
(ultrasound) or stain variation (histology). Nuisance factors vary independently of the label. New
modalities plug in with ``register_generator``. docs/benchmark.md describes the models and knobs.
"""

from pretextlab.phantoms import histology, ultrasound  # noqa: F401  (register the generators)
from pretextlab.phantoms.base import (
    GENERATORS,
    GLOBAL,
    LOCAL,
    ItemSpec,
    PhantomItem,
    PhantomSet,
    generate,
    register_generator,
)

__all__ = ["GENERATORS", "GLOBAL", "LOCAL", "ItemSpec", "PhantomItem", "PhantomSet", "generate", "register_generator"]
