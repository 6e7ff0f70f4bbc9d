"""Every name the server and the hospitals exchange, in one place, and record <-> array conversion.

Both sides import these constants; a key misspelt on one side is then an import error, not a
strategy silently switched off. A strategy's hospital hook lists the keys it reads (`strategies.hospital`).
"""
from __future__ import annotations

import numpy as np

# node config (what a SuperNode is started with)
PARTITION_ID = "partition-id"          # also in every reply's metrics: which hospital answered
NUM_PARTITIONS = "num-partitions"
DATA_PATH = "data-path"
STATE_DIR = "state-dir"                # also sent by the server in simulation
CACHE_DIR = "cache-dir"                # deployment: where the hospital keeps its prepared rows between messages
SITE_DIR = "site-dir"                  # deployment: the hospital's ledger and audit log (clients.site)
POLICY = "policy"                      # deployment: its site policy YAML (orchestrator.spec.policy)

# record names in a message's content
CONFIG, ARRAYS, METRICS = "config", "arrays", "metrics"
STATS, LABELS = "stats", "labels"                      # census reply
DESCRIPTION = "description"                            # deployment census: a hospital's facts, or its error
CONFUSION, REGRESSION = "confusion", "regression"      # evaluate reply: sums the server pools
MULTILABEL = "multilabel"                               # ... several findings per image: their counts
SEGMENTATION = "segmentation"                           # ... a label per pixel: Dice/IoU sums, never a mask
SUMS_RECORD = {"classification": CONFUSION, "regression": REGRESSION, "multilabel": MULTILABEL,
               "segmentation": SEGMENTATION}
SUMS_KEY = {CONFUSION: "counts", REGRESSION: "sums", MULTILABEL: "sums", SEGMENTATION: "sums"}   # the record's one list


def read_sums(records, num_classes: int) -> tuple[str, np.ndarray] | None:
    """(task, the sums) from an evaluation reply's records (or a report's extras); None if absent."""
    for task, name in SUMS_RECORD.items():
        if name in records:
            values = np.asarray(records[name][SUMS_KEY[name]], dtype=np.float64)
            return task, values.reshape(num_classes, num_classes) if task == "classification" else values
    return None
SITE = "site"                                          # any reply: its policy's digest, epsilon spent
CONTROL, CONTROL_DELTA = "control", "control_delta"    # SCAFFOLD: c (to hospitals), c_i+ - c_i (back)

# run config of the Flower App (pyproject [tool.flwr.app.config]), set by `consortium run`
RUN_JOB, RUN_MLFLOW = "job", "mlflow-run"

# config keys (server -> hospital)
JOB, SCHEMA = "job", "schema"          # the job spec (JSON) and the agreed schema (JSON)
RUN = "run"                            # the run's tracking id: how a hospital's ledger and audit log name it
SERVER_ROUND = "server-round"          # set by Flower's strategies
CLASS_WEIGHTS = "class-weights"
ATTRIBUTE = "attribute"                # a query after training: integrated gradients on the own test rows
PERSONALIZE = "personalize"            # a query after training: adapt the global model to the own rows
PROXIMAL_MU = "proximal-mu"            # set by Flower's FedProx: its key, so tests/unit check it
UNIFORM_WEIGHT = "uniform-weight"      # central DP: every hospital counts once
TRAINABLE, BUFFERS = "trainable", "buffers"   # SecAgg+: what is masked, what travels in the clear

# metric keys (hospital -> server)
NUM_EXAMPLES = "num-examples"          # Flower's weighting key
TRAIN_LOSS = "train_loss"
LOCAL_STEPS, MOMENTUM = "local-steps", "momentum"   # FedNova's step norms
DP_EPSILON = "dp_epsilon"              # local DP: what this hospital has spent
EVAL_PREFIX = "eval_"                  # evaluate metrics: eval_loss, eval_accuracy, ...
PERSONAL_PREFIX = "personal_"          # the hospital's personal model's (federated.personalize)
PERSONAL_SUMS = "personal-sums"        # its confusion counts / regression sums


def to_state(record) -> dict[str, np.ndarray]:
    """A Flower ArrayRecord as named numpy arrays, for the arithmetic hospitals and strategies do."""
    from orchestrator.adapters.flower import to_numpy

    return {k: to_numpy(v) for k, v in record.items()}


def from_state(state: dict):
    """Named numpy arrays or torch tensors as a Flower ArrayRecord: byte for byte what
    `ArrayRecord(state)` makes (each array's .npy serialization, as `np.save` writes it), its
    arrays `orchestrator.adapters.flower.Array`s: the .npy header made once per dtype and shape, and
    read back without parsing it (a round's replies carry the same few shapes from every hospital)."""
    from flwr.app import ArrayRecord

    from orchestrator.adapters.flower import Array

    record = ArrayRecord()   # filled item by item: ArrayRecord(dict) would rebuild each as Flower's Array
    for k, v in state.items():
        record[k] = Array(np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v))
    return record


def content_bytes(content) -> int:
    """The bytes a message's content takes on the wire, near enough: every array's serialized data
    and the other records' serialized form (Flower's per-object headers and gRPC framing aside)."""
    from flwr.app import ArrayRecord

    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(a.data) for a in record.values())
        else:
            total += len(record.deflate())
    return total
