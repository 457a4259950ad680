"""The pieces of inference that `segray.inference.segmenter.Segmenter` joins, one per responsibility.

network.py      Preprocess and ProbabilityModel: uint8 images -> probabilities (members, TTA)
tta.py          the flip / dihedral transforms and their exact inverses
ensemble.py     ensemble checkpoint directories (write_ensemble, load_members)
postprocess.py  per-class thresholds, post-processing, and choosing them on held-out data
"""

from segray.inference.ensemble import INFERENCE_KEYS, load_members, write_ensemble
from segray.inference.network import Preprocess, ProbabilityModel
from segray.inference.postprocess import (
    PostProcess,
    PostprocessChoice,
    choose_postprocessing,
    mean_dice,
)
from segray.inference.tta import TTA_MODES, transforms, tta_probs

__all__ = [
    "INFERENCE_KEYS",
    "TTA_MODES",
    "PostProcess",
    "PostprocessChoice",
    "Preprocess",
    "ProbabilityModel",
    "choose_postprocessing",
    "load_members",
    "mean_dice",
    "transforms",
    "tta_probs",
    "write_ensemble",
]
