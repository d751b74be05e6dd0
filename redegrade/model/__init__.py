"""The universal degradation model (CDD): degradation encoders, entropy models and the IDA-SFT U-Net.

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
