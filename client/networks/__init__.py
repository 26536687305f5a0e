"""The Wav2Lip generator, its lip-sync expert and quality discriminator, and syncnet_python's `S`."""

from lipsync.client.networks.checkpoints import CheckpointError, count_parameters, load_state_dict, save_checkpoint
from lipsync.client.networks.quality_disc import QualityDiscConfig, QualityDiscriminator
from lipsync.client.networks.syncnet import SyncNet, SyncNetConfig
from lipsync.client.networks.syncnet_v2 import SyncNetV2
from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig

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
