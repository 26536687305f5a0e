"""The Wav2Lip generator, its lip-sync expert and quality discriminator, and syncnet_python's `S`."""

from training.networks.checkpoints import CheckpointError, count_parameters, load_state_dict, save_checkpoint
from training.networks.quality_disc import QualityDiscConfig, QualityDiscriminator
from training.networks.syncnet import SyncNet, SyncNetConfig
from training.networks.syncnet_v2 import SyncNetV2
from training.networks.wav2lip import Wav2Lip, Wav2LipConfig

__all__ = [
    "CheckpointError",
    "QualityDiscConfig",
    "QualityDiscriminator",
    "SyncNet",
    "SyncNetConfig",
    "SyncNetV2",
    "Wav2Lip",
    "Wav2LipConfig",
    "count_parameters",
    "load_state_dict",
    "save_checkpoint",
]
