"""Weight transport: how the trainer's (HF name, tensor) stream reaches the rollout engines.

A leaf of the package (it imports only `rlrt_megatron.store_auth`), used from both ends: the
cluster's senders (`rlrt_megatron.cluster.sync`, `rlrt_megatron.cluster.pool`) pack and send,
the engines' receivers (`rlrt_megatron.rollout.weights.WeightUpdateExtension`, inside each vLLM
worker) unpack and load. Neither end imports the other.

* `buckets`: the bucket format (`TensorMeta`, `WeightBucket`, `unpack_flat`) and its packing
  (`pack_buckets`, `pack_flat_buckets`);
* `manifest`: the names and shapes a full update must carry (`WeightManifest`);
* `weight_group`: the broadcast transport (one process group, trainer rank to engine workers);
* `cuda_ipc`: the colocated transport (a CUDA IPC handle to the trainer rank's GPU bucket).
"""

from rlrt_megatron.transport.buckets import (
    ALIGNMENT,
    DEFAULT_BUCKET_BYTES,
    TensorMeta,
    WeightBucket,
    pack_buckets,
    pack_flat_buckets,
    unpack_flat,
)
from rlrt_megatron.transport.manifest import WeightManifest, checkpoint_manifest

__all__ = [
    "ALIGNMENT",
    "DEFAULT_BUCKET_BYTES",
    "TensorMeta",
    "WeightBucket",
    "WeightManifest",
    "checkpoint_manifest",
    "pack_buckets",
    "pack_flat_buckets",
    "unpack_flat",
]
