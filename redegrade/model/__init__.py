"""The universal degradation model (CDD): degradation encoders, entropy models and the IDA-SFT U-Net.

The paper's network is here (``config``, ``layers``, ``encoders``, ``synthesis``, ``entropy``, assembled in
``network``); our additions to it are in :mod:`redegrade.model.extras`, named by ``ModelConfig.extras``;
CDD's released network, exactly, and its checkpoint reader are in :mod:`redegrade.model.cdd`.

>>> cfg = ModelConfig.preset("tiny")
>>> m = UniversalDegradationModel(cfg)
"""
from redegrade.model.config import ModelConfig
from redegrade.model.entropy import CodeEntropyModel
from redegrade.model.network import DegradationCode, MapFusion, UniversalDegradationModel
from redegrade.model.io import load_state, save_state
from redegrade.model.cdd import CDDConfig, CDDModel

__all__ = ["ModelConfig", "UniversalDegradationModel", "DegradationCode", "MapFusion", "CodeEntropyModel",
           "load_state", "save_state", "CDDConfig", "CDDModel"]
